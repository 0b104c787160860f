"""One float pass over the calibration images that records what every fit and search needs, per layer operand.

For each input operand of each quantization layer (forward pre-hooks; the model runs with float params):

- the exact min and max and a bounded uniform random sample of its values (the fast fits; drawn with a seeded
  generator, so the pass is deterministic for a seed);
- for the post-softmax operand of ``matmul_av``: the first batch's first ``product_images`` maps and the values
  they multiply (TanQ scores ``maps @ values``);
- for the first ``keep_images`` images: the whole inputs (the output-aware search), concatenated over batches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..modules import QuantLayer
from ..quantizers import LayerParams

__all__ = ["Capture", "OperandStats", "capture_inputs"]


@dataclass
class OperandStats:
    """What was observed of one operand over all images: ``low``/``high`` (0-dim tensors), per token position
    (``position_low``/``position_high``: ``x.shape[1:-1]``) and per head (``head_low``/``head_high``: ``[H]``, for
    inputs of 4 dims or more), and a 1-D value ``sample``."""

    low: torch.Tensor | None = None
    high: torch.Tensor | None = None
    position_low: torch.Tensor | None = None
    position_high: torch.Tensor | None = None
    head_low: torch.Tensor | None = None
    head_high: torch.Tensor | None = None
    parts: list[torch.Tensor] = field(default_factory=list)
    sample_size: int = 1 << 16

    def observe(self, x: torch.Tensor, generator: torch.Generator) -> None:
        flat = x.detach().reshape(-1).float()
        if flat.numel() == 0:
            return
        low, high = flat.min(), flat.max()
        self.low = low if self.low is None else torch.minimum(self.low, low)
        self.high = high if self.high is None else torch.maximum(self.high, high)
        if x.dim() >= 3:
            x32 = x.detach().float()
            p_low, p_high = x32.amin(dim=(0, -1)), x32.amax(dim=(0, -1))
            self.position_low = p_low if self.position_low is None else torch.minimum(self.position_low, p_low)
            self.position_high = p_high if self.position_high is None else torch.maximum(self.position_high, p_high)
            if x.dim() >= 4:
                dims = [d for d in range(x.dim()) if d != 1]
                h_low, h_high = x32.amin(dim=dims), x32.amax(dim=dims)
                self.head_low = h_low if self.head_low is None else torch.minimum(self.head_low, h_low)
                self.head_high = h_high if self.head_high is None else torch.maximum(self.head_high, h_high)
        per_batch = max(self.sample_size // 8, 1)
        if flat.numel() > per_batch:
            flat = flat[torch.randint(0, flat.numel(), (per_batch,), device=flat.device, generator=generator)]
        merged = torch.cat([*self.parts, flat])
        if merged.numel() > self.sample_size:  # keep memory bounded: a random subsample of what was seen
            keep = torch.randperm(merged.numel(), device=merged.device, generator=generator)[: self.sample_size]
            merged = merged[keep]
        self.parts = [merged]

    def group_range(self, granularity: str, group: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Whole-set ``(min, max)`` per group of shape ``group`` (``()`` for the tensor, ``[N, 1]``-like per
        position, ``[H, 1, 1]`` per head)."""
        if not group:
            return self.low, self.high
        if granularity == "position":
            return self.position_low.reshape(group), self.position_high.reshape(group)
        return self.head_low.reshape(group), self.head_high.reshape(group)

    def sample(self) -> torch.Tensor:
        """The kept values (at most ``sample_size``) with the exact min and max included."""
        if self.low is None:
            raise RuntimeError("no data was observed for this operand")
        return torch.cat([*self.parts, torch.stack([self.low, self.high])])


@dataclass
class Capture:
    """Per layer: ``stats[layer][operand]``, ``inputs[layer]`` (whole inputs of the kept images, per operand) and
    ``products[layer]`` (``(maps, values)`` for ``matmul_av``)."""

    stats: dict[str, list[OperandStats]]
    inputs: dict[str, list[list[torch.Tensor]]]
    products: dict[str, tuple[torch.Tensor, torch.Tensor]]

    def layer_inputs(self, name: str) -> list[torch.Tensor]:
        """The kept whole inputs of ``name``, one tensor per operand ([images, ...]); [] when none were kept."""
        parts = self.inputs.get(name) or []
        if not parts:
            return []
        return [torch.cat([p[i] for p in parts]) for i in range(len(parts[0]))]

    def release(self, name: str) -> None:
        """Free the kept inputs of ``name`` (the search is done with it)."""
        self.inputs[name] = []


@torch.no_grad()
def capture_inputs(model: nn.Module, layers: dict[str, QuantLayer], images: torch.Tensor, *, batch_size: int,
                   keep_images: int, seed: int = 0, product_images: int = 2,
                   progress: Callable[[float], None] | None = None) -> Capture:
    """Run ``images`` [N, 3, H, W] through ``model`` with every layer at float params (restored afterwards) and
    record each operand (module doc). keep_images: how many leading images' whole inputs are kept (0: none)."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    saved = {name: layer.params for name, layer in layers.items()}
    stats = {name: [OperandStats() for _ in range(layer.n_inputs)] for name, layer in layers.items()}
    inputs: dict[str, list[list[torch.Tensor]]] = {name: [] for name in layers}
    products: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    seen = {"images": 0}

    def hook_for(name: str, layer: QuantLayer):
        def hook(_module, args):
            tensors = [a for a in args if isinstance(a, torch.Tensor)][: layer.n_inputs]
            for operand, x in enumerate(tensors):
                stats[name][operand].observe(x, generator)
            if layer.component == "matmul_av" and name not in products:
                products[name] = (tensors[0][:product_images].float().clone(),
                                  tensors[1][:product_images].float().clone())
            room = keep_images - seen["images"]
            if room > 0:
                inputs[name].append([_leading_images(x, room, seen["batch"]).clone() for x in tensors])
        return hook

    for layer in layers.values():
        layer.load_params(LayerParams.float(layer.n_inputs))
    handles = [layer.register_forward_pre_hook(hook_for(name, layer)) for name, layer in layers.items()]
    try:
        n = len(images)
        for start in range(0, n, batch_size):
            batch = images[start:start + batch_size].to(device)
            seen["batch"] = len(batch)
            model(batch)
            seen["images"] += len(batch)
            if progress is not None:
                progress(min(start + batch_size, n) / max(n, 1))
    finally:
        for handle in handles:
            handle.remove()
        for name, layer in layers.items():
            layer.load_params(saved[name])
    return Capture(stats, inputs, products)


def _leading_images(x: torch.Tensor, images: int, batch: int) -> torch.Tensor:
    """The part of an operand that belongs to the first ``images`` images of a batch of ``batch`` images (Swin's
    windowed operands carry ``windows * batch`` rows, image-major)."""
    if images >= batch:
        return x
    rows_per_image = max(x.shape[0] // batch, 1)
    return x[: images * rows_per_image]
