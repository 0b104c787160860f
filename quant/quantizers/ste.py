"""Straight-through rounding: round to nearest in the forward pass, identity gradient in the backward pass."""

from __future__ import annotations

import torch

__all__ = ["round_ste"]


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest with a straight-through gradient (d round(x)/dx := 1); plain rounding without autograd."""
    if not torch.is_grad_enabled() or not x.requires_grad:
        return x.round()
    return (x.round() - x).detach() + x
