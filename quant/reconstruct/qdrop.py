"""Activation quantizers while a block is trained: learned scales (LSQ-style) and QDrop.

QDrop (Wei et al., 2022): each activation-quantizer output element is kept quantized with probability ``p`` and
otherwise replaced by the quantizer's float input (the quantizer is bypassed element-wise). ``paused()`` turns
the bypass off (Fisher snapshots). Keep masks come from a ``MaskSource``:

- on the CPU, a pool of seeded 0/1 masks is drawn once per block and every mask of an iteration is a window of
  it at a seeded random offset (a view: no random numbers and no conversion per iteration, which were ~15 % of
  an iteration's time);
- on other devices (CUDA), every mask is a fresh draw from the device's RNG (seeded per block by the engine
  inside ``torch.random.fork_rng``): cheap there, and graph-capturable (no host-side offsets).

Uniform quantizers with static scales (per tensor, or grouped per position/head) are temporarily replaced by
``_TrainingUniform``, which evaluates exactly the same fake quantization as ``fake_quant_uniform`` with a fused
autograd function: the straight-through gradients of ``fake_quant_uniform`` (d/dx = 1 strictly inside the clamp
range, as torch.clamp's backward; d/ds = round(x/s) - x/s there, q_clamped - z otherwise) are computed in the
forward pass, so the backward pass is one product and one reduction instead of a dozen elementwise autograd
nodes, and the QDrop mix is folded in. The quantizer's own ``scale`` parameter is used, so what is learned stays
in the model. Other activation quantizers (post-softmax TanQ/log2, per-token uniform) keep their modules and get
QDrop from a forward hook.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..modules import QuantLayer
from ..quantizers import ActivationQuantizer, UniformQuantizer

__all__ = ["MaskSource", "TrainingActivations", "fake_quant_qdrop", "keep_mask"]

#: Granularities whose scale is a static (learnable) parameter.
_STATIC = ("tensor", "position", "head")


def keep_mask(shape: torch.Size, p: float, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Float mask of 0/1 on ``device``, each element 1 with probability ``p``. For ``p = 0.5`` every random byte
    gives 8 fair coins (about 4x faster than comparing uniform floats). Float, not bool: ``torch.lerp``/``mul``
    with a float mask are several times faster on CPU than ``torch.where`` with a bool one."""
    numel = math.prod(shape)
    if p == 0.5 and numel % 8 == 0:
        bits = torch.arange(8, dtype=torch.uint8, device=device)
        rnd = torch.randint(0, 256, (numel // 8, 1), dtype=torch.uint8, generator=generator, device=device)
        return ((rnd >> bits) & 1).view(shape).float()
    return (torch.rand(shape, generator=generator, device=device) < p).float()


class MaskSource:
    """QDrop keep masks (1 = keep quantized, probability ``p``), deterministic given ``seed``.

    CPU: windows of a pool drawn once (grown on demand) at offsets from a seeded ``random.Random``; the pool
    holds at least 4x the largest mask, so windows of consecutive iterations rarely coincide. Other devices:
    ``torch.rand(...) < p`` from the device's default generator (the caller seeds it).
    """

    def __init__(self, p: float, seed: int, device: torch.device) -> None:
        self.p, self.device = float(p), torch.device(device)
        self.pooled = self.device.type == "cpu"
        self._offsets = random.Random(seed)
        self._generator = torch.Generator(device="cpu").manual_seed(seed) if self.pooled else None
        self._pool = torch.empty(0, device=self.device)

    def __call__(self, shape: torch.Size, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if not self.pooled:
            return (torch.rand(shape, device=self.device) < self.p).to(dtype)
        numel = math.prod(shape)
        if self._pool.numel() < 4 * numel:
            size = 8 * ((4 * numel + 4095) // 8)
            self._pool = keep_mask((size,), self.p, self._generator, self.device)
        start = self._offsets.randrange(self._pool.numel() - numel + 1)
        mask = self._pool[start:start + numel].view(shape)
        return mask if mask.dtype == dtype else mask.to(dtype)


class _FakeQuantQDrop(torch.autograd.Function):
    """Forward computes the output and the two per-element derivatives, so the backward pass is one product and
    one reduction; selections are ``lerp``/products with float masks (much faster than ``where`` on CPU)."""

    @staticmethod
    def forward(ctx, x, scale, zero, qmax: int, keep):
        v = x / scale
        r = torch.round(v)
        # integer code clamp(r + z, 0, qmax) (float bounds: several times faster than tensor bounds); r and z are
        # small integers, so ``c - z`` equals clamp(r, -z, qmax - z) exactly
        c = (r + zero).clamp_(0, qmax)
        # torch.clamp's backward passes gradients strictly inside the bounds: c (qmax - c) is 0 at both ends and
        # >= 1 inside, so this is the 0/1 mask without comparisons or bool->float conversions (slow on CPU)
        inside = (qmax - c).mul_(c).clamp_(max=1.0)
        qz = c.sub_(zero)
        y = qz * scale
        if keep is not None:
            y = torch.lerp(x, y, keep)  # keep = 1: quantized, 0: the float input
        dyds = None
        if ctx.needs_input_grad[1]:  # d y / d scale = round(x/s) - x/s inside, q - z outside
            dyds = torch.lerp(qz, r.sub_(v), inside)
            if keep is not None:
                dyds.mul_(keep)
        # d y / d x: inside where kept, 1 where bypassed (= 1 - keep (1 - inside))
        pass_x = inside if keep is None else inside.sub_(1.0).mul_(keep).add_(1.0)
        ctx.save_for_backward(pass_x, dyds)
        ctx.scale_shape = scale.shape
        return y

    @staticmethod
    def backward(ctx, grad):
        pass_x, dyds = ctx.saved_tensors
        grad_x = grad * pass_x if ctx.needs_input_grad[0] else None
        grad_s = None
        if dyds is not None:
            if math.prod(ctx.scale_shape) == 1:
                grad_s = torch.dot(grad.reshape(-1), dyds.reshape(-1)).reshape(ctx.scale_shape)
            else:  # grouped scales (per position/head): reduce over the broadcast dimensions
                grad_s = (grad * dyds).sum_to_size(ctx.scale_shape)
        return grad_x, grad_s, None, None, None


def fake_quant_qdrop(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int,
                     keep: torch.Tensor | None = None) -> torch.Tensor:
    """``fake_quant_uniform(x, scale, zero, bits)`` where ``keep`` is 1 (else ``x``; ``keep`` a float 0/1 mask),
    with the straight-through gradients of ``fake_quant_uniform``."""
    return _FakeQuantQDrop.apply(x, scale, zero, 2**bits - 1, keep)


class _TrainingUniform(nn.Module):
    """Stand-in for a static-scale ``UniformQuantizer`` during block training."""

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
        if q.scale.dim() and q.scale.dim() >= x.dim():  # a grouped scale that does not broadcast: module path
            out = q(x)
            return out if keep is None else torch.lerp(x, out, keep)
        return fake_quant_qdrop(x, q.scale, q.zero_point, q.bits, keep)


class TrainingActivations:
    """Install training activation quantizers in ``layers``; ``scales`` are the learnable parameters.

    ``drop_prob`` is the probability of keeping an element quantized (1 = no QDrop); masks come from
    ``masks`` (a ``MaskSource``; default: one seeded with 0 on the layers' device). ``remove()`` restores the
    original modules (the learned scales are already in them).
    """

    def __init__(self, layers: dict[str, QuantLayer], drop_prob: float, masks: MaskSource | None = None) -> None:
        self.p = float(drop_prob)
        self.enabled = self.p < 1.0
        self.scales: list[nn.Parameter] = []
        self._swapped: list[tuple[nn.Module, str, ActivationQuantizer]] = []
        self._handles = []
        device = None
        for layer in layers.values():
            for attr, child in list(layer.named_children()):
                if not isinstance(child, ActivationQuantizer) or not child.active:
                    continue
                if isinstance(child, UniformQuantizer) and child.granularity in _STATIC:
                    setattr(layer, attr, _TrainingUniform(child, self))
                    self._swapped.append((layer, attr, child))
                    self.scales.append(child.scale)
                    device = child.scale.device
                else:
                    self._handles.append(child.register_forward_hook(self._hook))
        if masks is None:
            masks = MaskSource(self.p, 0, device if device is not None else torch.device("cpu"))
        self.masks = masks

    def mask(self, x: torch.Tensor) -> torch.Tensor | None:
        if not self.enabled:
            return None
        return self.masks(x.shape, x.dtype)

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
