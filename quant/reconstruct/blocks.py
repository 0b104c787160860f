"""Reconstruction blocks of a timm ViT/DeiT/Swin, and block-by-block propagation of cached activations.

A *block* is a slice of the model's forward pass that maps one tensor to the next (the residual stream):

- ViT/DeiT: ``patch_embed`` (patch embedding + position embedding + ``norm_pre``), ``blocks.0`` ...
  ``blocks.{depth-1}``, ``head`` (final ``norm`` + pooling + ``fc_norm`` + classifier).
- Swin: ``patch_embed`` (conv + norm), then per stage its ``layers.S.downsample`` (patch merging, when present)
  and ``layers.S.blocks.J``, then ``head`` (final ``norm`` + ``head`` with its pooling).

``discover_blocks(model)`` works on both the float model and its wrapped, quantized copy (the same timm names),
so block ``i`` of one is block ``i`` of the other. Composing all blocks reproduces ``model(x)`` exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ..modules import QuantLayer

__all__ = ["Block", "block_quant_layers", "discover_blocks", "map_batches", "run_blocks"]


@dataclass(frozen=True)
class Block:
    """One reconstruction unit: ``name`` (timm module name or ``patch_embed``/``head``), the module-name
    ``prefixes`` whose parameters it owns, ``kind`` (``embed``, ``block``, ``merge``, ``head``) and ``forward``
    (tensor -> tensor)."""

    name: str
    kind: str
    prefixes: tuple[str, ...]
    forward: Callable[[torch.Tensor], torch.Tensor]

    def owns(self, module_name: str) -> bool:
        """Whether ``module_name`` (a timm module name) lies inside this block."""
        return any(module_name == p or module_name.startswith(p + ".") for p in self.prefixes)


def _vit_blocks(model: VisionTransformer) -> list[Block]:
    def embed(x: torch.Tensor) -> torch.Tensor:
        return model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))

    def head(x: torch.Tensor) -> torch.Tensor:
        return model.forward_head(model.norm(x))

    blocks = [Block("patch_embed", "embed", ("patch_embed", "cls_token", "reg_token", "pos_embed", "norm_pre"), embed)]
    blocks += [Block(f"blocks.{i}", "block", (f"blocks.{i}",), blk) for i, blk in enumerate(model.blocks)]
    head_prefixes = tuple(p for p in ("norm", "attn_pool", "fc_norm", "head", "head_dist") if hasattr(model, p))
    blocks.append(Block("head", "head", head_prefixes, head))
    return blocks


def _swin_blocks(model: SwinTransformer) -> list[Block]:
    def head(x: torch.Tensor) -> torch.Tensor:
        return model.forward_head(model.norm(x))

    blocks = [Block("patch_embed", "embed", ("patch_embed", "absolute_pos_embed"), model.patch_embed)]
    for s, stage in enumerate(model.layers):
        if not isinstance(stage.downsample, nn.Identity):
            blocks.append(Block(f"layers.{s}.downsample", "merge", (f"layers.{s}.downsample",), stage.downsample))
        blocks += [Block(f"layers.{s}.blocks.{j}", "block", (f"layers.{s}.blocks.{j}",), blk)
                   for j, blk in enumerate(stage.blocks)]
    blocks.append(Block("head", "head", ("norm", "head"), head))
    return blocks


def discover_blocks(model: nn.Module) -> list[Block]:
    """The reconstruction blocks of a timm ``VisionTransformer`` (ViT, DeiT) or ``SwinTransformer``, in order.

    Raises ``ValueError`` for other architectures (the message names the supported classes).
    """
    if isinstance(model, VisionTransformer):
        if getattr(model, "grad_checkpointing", False):
            raise ValueError("disable grad checkpointing (model.set_grad_checkpointing(False)) before reconstruction")
        return _vit_blocks(model)
    if isinstance(model, SwinTransformer):
        return _swin_blocks(model)
    raise ValueError(
        f"block reconstruction supports timm VisionTransformer (ViT, DeiT) and SwinTransformer models; "
        f"got {type(model).__name__}"
    )


def block_quant_layers(model: nn.Module, block: Block) -> dict[str, QuantLayer]:
    """Quantization layers inside ``block``, keyed by timm name, in forward order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLayer) and block.owns(n)}


def _chunks(n: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


@torch.no_grad()
def map_batches(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``fn`` applied to ``x`` in fixed consecutive batches (the same batches every time: bit-reproducible)."""
    return torch.cat([fn(x[s]) for s in _chunks(len(x), batch_size)])


def run_blocks(blocks: Sequence[Block], x: torch.Tensor) -> torch.Tensor:
    """Compose ``blocks`` on ``x`` (with autograd if enabled by the caller)."""
    for block in blocks:
        x = block.forward(x)
    return x
