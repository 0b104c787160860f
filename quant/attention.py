"""Quantized forward passes for timm's ViT ``Attention`` and Swin ``WindowAttention``.

The wrapped attention keeps its class hierarchy (the instance's class is swapped to a subclass whose forward
is the unfused attention with two ``QuantMatMul`` children: ``matmul_qk`` quantizes q and k for ``q @ k^T``,
``matmul_av`` quantizes the post-softmax map and v for ``attn @ v``). Relative position bias and
shifted-window masks of Swin are applied exactly as timm does.
"""

from __future__ import annotations

import torch
from timm.layers.attention import Attention, maybe_add_mask, resolve_self_attn_mask
from timm.models.swin_transformer import WindowAttention
from torch import nn

from .modules import QuantMatMul

__all__ = ["QuantViTAttention", "QuantWindowAttention", "install_quant_attention"]


class QuantViTAttention(Attention):
    """timm ``Attention`` with quantized matmuls (installed by ``install_quant_attention``)."""

    matmul_qk: QuantMatMul
    matmul_av: QuantMatMul

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False):
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        q = q * self.scale
        attn = self.matmul_qk(q, k.transpose(-2, -1))
        attn = maybe_add_mask(attn, resolve_self_attn_mask(N, attn, attn_mask, is_causal))
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = self.matmul_av(attn, v)
        x = x.transpose(1, 2).reshape(B, N, self.attn_dim)
        x = self.norm(x)
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))


class QuantWindowAttention(WindowAttention):
    """timm Swin ``WindowAttention`` with quantized matmuls (installed by ``install_quant_attention``)."""

    matmul_qk: QuantMatMul
    matmul_av: QuantMatMul

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B_, N, _ = x.shape
        qkv = self.qkv(x).reshape(B_, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q = q * self.scale
        attn = self.matmul_qk(q, k.transpose(-2, -1))
        attn = attn + self._get_rel_pos_bias()
        if mask is not None:
            num_win = mask.shape[0]
            attn = attn.view(-1, num_win, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, N, N)
        attn = self.attn_drop(self.softmax(attn))
        x = self.matmul_av(attn, v)
        x = x.transpose(1, 2).reshape(B_, N, -1)
        return self.proj_drop(self.proj(x))


_WRAPPERS: dict[type, type] = {Attention: QuantViTAttention, WindowAttention: QuantWindowAttention}


def install_quant_attention(module: nn.Module, target: str = "sim", block_size: int = 32) -> bool:
    """Turn a timm ``Attention``/``WindowAttention`` into its quantized subclass in place.

    Adds ``matmul_qk`` (operands q and k) and ``matmul_av`` (operands: the post-softmax map and v), both with
    float params until params are loaded. Returns False when ``module`` is not a supported attention class.
    """
    quantized_class = _WRAPPERS.get(type(module))
    if quantized_class is None:
        return False
    module.__class__ = quantized_class
    module.fused_attn = False
    module.matmul_qk = QuantMatMul("matmul_qk", target, block_size)
    module.matmul_av = QuantMatMul("matmul_av", target, block_size)
    for later in ("proj", "proj_drop"):  # keep registration (= forward) order: qkv, matmuls, proj
        module._modules[later] = module._modules.pop(later)
    return True
