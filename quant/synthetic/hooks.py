"""Where a vision transformer's patch tokens are read: one site per attention block (ViT/DeiT) or stage (Swin).

- ViT / DeiT (timm ``VisionTransformer`` and subclasses): the output of every ``blocks.i`` is ``[B, P + N, C]``;
  the ``P = model.num_prefix_tokens`` prefix tokens (class token; DeiT's class and distillation tokens; register
  tokens) are dropped, leaving the ``N`` patch tokens ``[B, N, C]``.
- Swin (timm ``SwinTransformer``): the output of every stage ``layers.i`` is the patch grid ``[B, H, W, C]``
  (windowed attention has no global token), flattened to ``[B, H * W, C]``.

A model with neither has no attention blocks to read: :class:`NoAttentionBlocksError` (a ``PipelineInputError`` with
code ``no_attention_blocks``, so a service refuses such a job at submit).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

import torch
from torch import nn

from ..errors import PipelineInputError

__all__ = ["NoAttentionBlocksError", "PatchTokenCapture", "TokenSite", "token_sites"]


class NoAttentionBlocksError(PipelineInputError):
    """The model has no attention blocks whose patch tokens the data-free generator could read."""

    def __init__(self, arch: str) -> None:
        super().__init__(
            "no_attention_blocks",
            f"{arch} has no attention blocks (ViT/DeiT 'blocks' or Swin 'layers'), so synthetic calibration "
            "images cannot be generated for it; upload calibration images instead (data.artifact_id) or use a "
            "ViT, DeiT or Swin architecture",
            {"architecture": arch},
        )


@dataclass(frozen=True)
class TokenSite:
    """One module whose output holds patch tokens: its name, ``layout`` (``tokens`` ``[B, P+N, C]`` or ``grid``
    ``[B, H, W, C]``) and the number of prefix tokens to drop (``tokens`` only)."""

    name: str
    layout: str
    prefix: int = 0


def _has_attention(module: nn.Module) -> bool:
    return isinstance(getattr(module, "attn", None), nn.Module)


def token_sites(model: nn.Module) -> list[TokenSite]:
    """The patch-token sites of ``model`` in forward order (module doc); raises :class:`NoAttentionBlocksError`."""
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.Sequential | nn.ModuleList) and any(_has_attention(b) for b in blocks):
        prefix = int(getattr(model, "num_prefix_tokens", 1 if getattr(model, "cls_token", None) is not None else 0))
        return [TokenSite(f"blocks.{i}", "tokens", prefix) for i, b in enumerate(blocks) if _has_attention(b)]
    layers = getattr(model, "layers", None)
    if isinstance(layers, nn.Sequential | nn.ModuleList):
        sites = [TokenSite(f"layers.{i}", "grid") for i, stage in enumerate(layers)
                 if isinstance(getattr(stage, "blocks", None), nn.Module)
                 and any(_has_attention(b) for b in stage.blocks.children())]
        if sites:
            return sites
    raise NoAttentionBlocksError(type(model).__name__)


def _patch_tokens(output: torch.Tensor, site: TokenSite) -> torch.Tensor:
    if isinstance(output, tuple | list):
        output = output[0]
    if site.layout == "grid":
        if output.dim() != 4:
            raise ValueError(f"{site.name}: expected a [B, H, W, C] patch grid, got shape {tuple(output.shape)}")
        return output.flatten(1, 2)
    if output.dim() != 3:
        raise ValueError(f"{site.name}: expected [B, tokens, C], got shape {tuple(output.shape)}")
    return output[:, site.prefix:]


class PatchTokenCapture:
    """Forward hooks that keep the patch tokens ``[B, N, C]`` of every site during one forward pass.

    Use as a context manager; ``tokens`` holds one tensor per site (graph kept, so losses on them backpropagate
    into the images) and is emptied by :meth:`clear`.
    """

    def __init__(self, model: nn.Module, sites: list[TokenSite] | None = None) -> None:
        self.model = model
        self.sites = sites if sites is not None else token_sites(model)
        self.tokens: list[torch.Tensor] = []
        self._handles: list = []

    def __enter__(self) -> Self:
        modules = dict(self.model.named_modules())
        for site in self.sites:
            def hook(_module, _inputs, output, site=site):
                self.tokens.append(_patch_tokens(output, site))
            self._handles.append(modules[site.name].register_forward_hook(hook))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.tokens.clear()

    def clear(self) -> None:
        """Forget the tokens of the last forward pass."""
        self.tokens.clear()
