"""LampQ's Fisher sensitivity of every parameter-table entry, from one forward and backward pass per batch.

The predicted loss increase of running layer ``l``'s weights with the table's ``w``-bit params is
``Omega_w(l, w) = 1/2 * sum_i F_i (Q(w_i) - w_i)^2`` and of its inputs with the ``a``-bit params
``Omega_a(l, a) = 1/2 * E_x[sum_j (dL/dx_j)^2 (Q(x_j) - x_j)^2]`` (nats per image), where ``Q`` is exactly the
quantizer the job would ship: the table's entry (per-position, per-head, TanQ, block-wise... params included).

Which loss: with labels, the per-image cross-entropy (empirical Fisher). Without labels, the KL divergence to the
float model, whose second-order expansion around the float weights is ``1/2 dtheta^T F dtheta`` with ``F`` the
Fisher of the float model's own predictive distribution; we estimate that ``F`` by sampling one label per image
from the float model's softmax and back-propagating its negative log-likelihood (Monte Carlo "true" Fisher).
Gradients are taken on the float model (every layer at float params).

Cost: parameter gradients are not materialised; hooks compute per-image weight gradients (one einsum per layer,
the same MACs as a normal weight gradient), square them and accumulate, and multiply activation gradients with every
candidate's quantization error (computed on the whole tensor, so grouped scales broadcast exactly as they run)
on a fixed-size random subset of positions per tensor, an unbiased estimate of the sum.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..modules import QuantConv2d, QuantLayer
from ..quantizers import LayerParams, fake_quant, quantize_weight

__all__ = ["ACT_POSITIONS", "FisherPass", "fisher_pass"]

#: Activation positions per tensor and batch on which candidate errors are evaluated (unbiased subsample).
ACT_POSITIONS = 16384


class FisherPass:
    """Forward/backward hooks accumulating squared per-image weight gradients and activation Omegas.

    acts[layer]: ``{key: (params of operand 0, params of operand 1...)}`` the input Omegas are computed for (keys:
    input bits on ``sim``, form names on runtime targets)."""

    def __init__(self, layers: dict[str, QuantLayer], acts: dict[str, dict], seed: int = 0) -> None:
        self.layers = layers
        self.acts = acts
        self.fisher: dict[str, torch.Tensor] = {}
        # activation Omegas per layer: one device tensor [len(keys)] each, read back once at the end
        self.act_sums: dict[str, torch.Tensor] = {}
        self.seed = seed
        self.generators: dict[torch.device, torch.Generator] = {}
        self.handles = [layer.register_forward_hook(self._forward_hook(name, layer)) for name, layer in layers.items()]

    def _forward_hook(self, name: str, layer: QuantLayer):
        def hook(_module, inputs, output):
            for operand, x in enumerate(inputs[: layer.n_inputs]):
                if x.requires_grad and self.acts.get(name):
                    x.register_hook(self._act_grad_hook(name, operand, x.detach()))
            if layer.has_weight and output.requires_grad:
                output.register_hook(self._weight_grad_hook(name, layer, inputs[0].detach()))

        return hook

    def generator(self, device: torch.device) -> torch.Generator:
        """The seeded generator of ``device`` (position subsets are drawn where the tensors live)."""
        if device not in self.generators:
            self.generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self.generators[device]

    def act_omegas(self, n_images: int) -> dict[str, dict]:
        """``{layer: {key: Omega_a}}`` per image (one device-to-host copy per layer)."""
        out = {}
        for name in self.layers:
            keys = list(self.acts.get(name, {}))
            sums = self.act_sums.get(name)
            values = sums.tolist() if sums is not None else [0.0] * len(keys)
            out[name] = {key: value / n_images for key, value in zip(keys, values, strict=True)}
        return out

    def _act_grad_hook(self, name: str, operand: int, x: torch.Tensor):
        def hook(grad):
            flat, g = x.reshape(-1), grad.detach().reshape(-1)
            scale, pick = 1.0, None
            if flat.numel() > ACT_POSITIONS:
                # Unbiased estimate of the sum on a fixed-size random subset of positions.
                pick = torch.randint(0, flat.numel(), (ACT_POSITIONS,), generator=self.generator(flat.device),
                                     device=flat.device)
                scale = flat.numel() / ACT_POSITIONS
                g = g[pick]
            g2 = g.float().pow(2)
            rows = []
            for params in self.acts[name].values():
                p = params[operand]
                if p is None:
                    rows.append(torch.zeros((), device=g2.device))
                    continue
                err = (fake_quant(x, p) - x).reshape(-1)
                err = err if pick is None else err[pick]
                rows.append((err.float().pow(2) * g2).sum())
            omegas = torch.stack(rows).mul_(0.5 * scale)  # [keys], stays on the device
            if name in self.act_sums:
                self.act_sums[name] += omegas
            else:
                self.act_sums[name] = omegas
        return hook

    def _weight_grad_hook(self, name: str, layer: QuantLayer, x: torch.Tensor):
        def hook(grad):
            g = grad.detach().float()
            if isinstance(layer, QuantConv2d):
                cols = F.unfold(x.float(), layer.kernel_size, layer.dilation, layer.padding, layer.stride)
                cols = cols.transpose(1, 2)  # [B, T, C*k*k]
                g = g.flatten(2).transpose(1, 2)  # [B, T, out]
            else:
                cols = x.float()
                if cols.dim() == 2:
                    cols, g = cols[:, None], g[:, None]
                cols = cols.reshape(cols.shape[0], -1, cols.shape[-1])
                g = g.reshape(g.shape[0], -1, g.shape[-1])
            per_image = torch.einsum("bto,bti->boi", g, cols)
            sq = per_image.pow(2).sum(0)
            if name in self.fisher:
                self.fisher[name] += sq
            else:
                self.fisher[name] = sq
        return hook

    @torch.no_grad()
    def weight_omegas(self, weights: dict[str, dict], n_images: int) -> dict[str, dict]:
        """``{layer: {key: Omega_w}}`` per image for ``weights[layer] = {key: WeightParams}``."""
        omegas: list[tuple[str, object, torch.Tensor]] = []
        for name, items in weights.items():
            fisher = self.fisher.get(name)
            if fisher is None or not items:
                continue
            layer = self.layers[name]
            w = layer.weight.detach().float()
            f = fisher.reshape(layer.weight.shape) / n_images
            for key, params in items.items():
                omegas.append((name, key, 0.5 * (f * (quantize_weight(w, params) - w).pow(2)).sum()))
        values = torch.stack([v for _, _, v in omegas]).tolist() if omegas else []  # one device-to-host copy
        out: dict[str, dict] = {name: {} for name in self.layers}
        for (name, key, _), value in zip(omegas, values, strict=True):
            out[name][key] = value
        return out

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _per_image_loss(logits: torch.Tensor, labels: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
    """Summed cross-entropy to ``labels``, or to one label per image sampled from the model's own softmax on the
    logits' device with ``generator`` (a generator of that device)."""
    if labels is not None:
        targets = labels.to(logits.device)
    else:
        probs = logits.detach().float().softmax(-1)
        targets = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return F.cross_entropy(logits, targets, reduction="sum")


def fisher_pass(model: nn.Module, layers: dict[str, QuantLayer], acts: dict[str, dict], images: torch.Tensor,
                labels: torch.Tensor | None, *, batch_size: int, seed: int,
                progress: Callable[[float], None] | None = None) -> FisherPass:
    """Run the forward and backward passes over ``images`` [N, 3, H, W] with every layer at float params and the
    hooks installed; parameter ``requires_grad`` flags and every layer's params are restored afterwards."""
    params = list(model.parameters())
    saved_grad = [p.requires_grad for p in params]
    saved_params = {name: layer.params for name, layer in layers.items()}
    device = params[0].device
    generator = torch.Generator(device=device).manual_seed(seed)
    for layer in layers.values():
        layer.load_params(LayerParams.float(layer.n_inputs))
    for p in params:
        p.requires_grad_(False)
    hooks = FisherPass(layers, acts, seed)
    n_images = len(images)
    try:
        for start in range(0, n_images, batch_size):
            batch = images[start : start + batch_size].to(device).requires_grad_(True)
            logits = model(batch)
            loss = _per_image_loss(logits, None if labels is None else labels[start : start + batch_size], generator)
            loss.backward()
            if progress:
                progress(min(start + batch_size, n_images) / n_images)
    finally:
        hooks.remove()
        for p, flag in zip(params, saved_grad, strict=True):
            p.requires_grad_(flag)
        for name, layer in layers.items():
            layer.load_params(saved_params[name])
    return hooks
