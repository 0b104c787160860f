"""Activation quantizers while a block is trained: learned scales (LSQ-style) and QDrop.

QDrop (Wei et al., 2022): each activation-quantizer output element is kept quantized with probability ``p`` and
otherwise replaced by the quantizer's float input (the quantizer is bypassed element-wise). Masks come from the
block's seeded generator (deterministic). ``paused()`` turns the bypass off (Fisher snapshots).

Uniform per-tensor quantizers are temporarily replaced by ``_TrainingUniform``, which evaluates exactly the same
fake quantization as ``fake_quant_uniform`` (same operations, same values) with a fused autograd function: the
straight-through gradients of ``fake_quant_uniform`` (d/dx = 1 strictly inside the range, as torch.clamp's
backward; d/ds = round(x/s) - x/s inside, q_clamped - z otherwise) are computed in one backward pass instead of a dozen elementwise autograd nodes, and the QDrop
mix is folded in. The quantizer's own ``scale`` parameter is used, so what is learned stays in the model. Other
activation quantizers (post-softmax TanQ/log2, per-token uniform) keep their modules and get QDrop from a forward
hook.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..modules import QuantLayer
from ..quantizers import ActivationQuantizer, UniformQuantizer

__all__ = ["TrainingActivations", "fake_quant_qdrop", "keep_mask"]


def keep_mask(shape: torch.Size, p: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Float mask of 0/1, each element 1 with probability ``p``. For ``p = 0.5`` every random byte gives 8 fair
    coins (about 4x faster than comparing uniform floats). Float, not bool: ``torch.lerp``/``mul`` with a float
    mask are several times faster on CPU than ``torch.where`` with a bool one."""
    numel = math.prod(shape)
    if p == 0.5 and numel % 8 == 0:
        bits = torch.arange(8, dtype=torch.uint8, device=device)
        rnd = torch.randint(0, 256, (numel // 8, 1), dtype=torch.uint8, generator=generator, device=device)
        return ((rnd >> bits) & 1).view(shape).float()
    return (torch.rand(shape, generator=generator, device=device) < p).float()


class _FakeQuantQDrop(torch.autograd.Function):
    """Forward computes the output and the two per-element derivatives, so the backward pass is one product and
    one dot product; selections are ``lerp``/products with float masks (much faster than ``where`` on CPU)."""

    @staticmethod
    def forward(ctx, x, scale, zero, qmax: int, keep):
        v = x / scale
        r = torch.round(v)
        qz = torch.clamp(r + zero, 0, qmax).sub_(zero)  # q - z, with q on the integer grid
        # torch.clamp's backward passes gradients strictly inside the bounds
        inside = ((qz > -zero) & (qz < qmax - zero)).to(x.dtype)
        y = qz * scale
        if keep is not None:
            y = torch.lerp(x, y, keep)  # keep = 1: quantized, 0: the float input
        pass_x = inside if keep is None else torch.addcmul(1.0 - keep, keep, inside)
        dyds = None
        if ctx.needs_input_grad[1]:  # d y / d scale = round(x/s) - x/s inside, q - z outside
            dyds = torch.lerp(qz, r.sub_(v), inside)
            if keep is not None:
                dyds.mul_(keep)
        ctx.save_for_backward(pass_x, dyds)
        ctx.scale_shape = scale.shape
        return y

    @staticmethod
    def backward(ctx, grad):
        pass_x, dyds = ctx.saved_tensors
        grad_x = grad * pass_x if ctx.needs_input_grad[0] else None
        grad_s = None
        if dyds is not None:
            grad_s = torch.dot(grad.reshape(-1), dyds.reshape(-1)).reshape(ctx.scale_shape)
        return grad_x, grad_s, None, None, None


def fake_quant_qdrop(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int,
                     keep: torch.Tensor | None = None) -> torch.Tensor:
    """``fake_quant_uniform(x, scale, zero, bits)`` where ``keep`` is 1 (else ``x``; ``keep`` a float 0/1 mask),
    with the straight-through gradients of ``fake_quant_uniform``."""
    return _FakeQuantQDrop.apply(x, scale, zero, 2**bits - 1, keep)


class _TrainingUniform(nn.Module):
    """Stand-in for a per-tensor ``UniformQuantizer`` during block training."""

    def __init__(self, original: UniformQuantizer, owner: TrainingActivations) -> None:
        super().__init__()
        self.original = [original]  # not registered: the original keeps owning its parameters
        self.owner = [owner]

    def __getattr__(self, name: str):
        """Anything else (``bits``, ``active``, ``observing``...) reads through to the original quantizer."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            original = self.__dict__.get("original")
            if original is None:
                raise
            return getattr(original[0], name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.original[0]
        keep = self.owner[0].mask(x)
        return fake_quant_qdrop(x, q.scale, q.zero_point, q.bits, keep)


class TrainingActivations:
    """Install training activation quantizers in ``layers``; ``scales`` are the learnable parameters.

    ``drop_prob`` is the probability of keeping an element quantized (1 = no QDrop). ``remove()`` restores the
    original modules (the learned scales are already in them).
    """

    def __init__(self, layers: dict[str, QuantLayer], drop_prob: float, generator: torch.Generator) -> None:
        self.p = float(drop_prob)
        self.generator = generator
        self.enabled = self.p < 1.0
        self.scales: list[nn.Parameter] = []
        self._swapped: list[tuple[nn.Module, str, ActivationQuantizer]] = []
        self._handles = []
        for layer in layers.values():
            for attr, child in list(layer.named_children()):
                if not isinstance(child, ActivationQuantizer) or not child.active:
                    continue
                if isinstance(child, UniformQuantizer) and child.granularity == "tensor":
                    setattr(layer, attr, _TrainingUniform(child, self))
                    self._swapped.append((layer, attr, child))
                    self.scales.append(child.scale)
                else:
                    self._handles.append(child.register_forward_hook(self._hook))

    def mask(self, x: torch.Tensor) -> torch.Tensor | None:
        if not self.enabled:
            return None
        return keep_mask(x.shape, self.p, self.generator, x.device)

    def _hook(self, _module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        keep = self.mask(output)
        return None if keep is None else torch.lerp(inputs[0], output, keep)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """QDrop off (plain quantized forward) inside the context."""
        previous, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = previous

    def remove(self) -> None:
        for layer, attr, original in self._swapped:
            setattr(layer, attr, original)
        for handle in self._handles:
            handle.remove()
        self._swapped, self._handles = [], []
