"""LampQ's iterative update: measure what the assignment really costs per layer, correct the sensitivities, solve
again.

Each round assembles the model with one layer at a time at its assigned table entry (every other layer float) and
measures the KL to float on a calibration subset, compares it with the predicted Omega, folds the damped ratio
(geometric mean with the previous factor, clamped to [0.25, 4]) into a per-layer factor and solves again; it stops
when the assignment no longer changes. Measurements are kept per ``(layer, pair)``: a later round measures only the
layers whose assignment changed (the table already holds every candidate's params, so nothing is re-fitted).

Layers measured one at a time miss how their errors add up in the whole model: the sensitivity is separable, the
errors of a mixed assignment are not (on the Swin built-in, a W3/A4 mixed assignment's KL is about twice the sum of
its layers' alone, while at uniform W4A4 the two agree). Each round therefore also measures the whole model at the
assignment, and every layer's measured KL is scaled by the round's interaction ratio ``rho`` = whole / sum of the
layers alone, so the corrected Omegas sum to the KL the assignment really has on the calibration images (our
documented reading of LampQ's "measure what the proxy predicted against what happened").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from ..calibration import Pair, ParamTable
from ..evaluate import predict_logits
from ..sensitivity import SensitivityTable, measure_kl
from ..wrap import load_params_, quant_layers

__all__ = ["FACTOR_RANGE", "LayerKL", "interaction_ratio", "measure_layer_kl", "update_layer_factors"]

FACTOR_RANGE = (0.25, 4.0)
#: Bounds of the interaction ratio (whole model over the sum of its layers alone).
RHO_RANGE = (0.5, 8.0)


class LayerKL:
    """Measured KL to float (nats per image) of one layer at one table entry, the rest float; cached per pair."""

    def __init__(self, qmodel: nn.Module, table: ParamTable, images: torch.Tensor, batch_size: int = 64) -> None:
        self.qmodel, self.table, self.images, self.batch_size = qmodel, table, images, batch_size
        self.measured: dict[tuple[str, Pair], float] = {}
        self._float_logits: torch.Tensor | None = None

    @torch.no_grad()
    def __call__(self, assignment: Mapping[str, Pair]) -> dict[str, float]:
        """``{layer: KL}`` for ``assignment`` (each layer measured alone); only pairs not measured before run."""
        layers = quant_layers(self.qmodel)
        saved = {name: layer.params for name, layer in layers.items()}
        try:
            if self._float_logits is None:
                load_params_(self.qmodel, {})
                self._float_logits = predict_logits(self.qmodel, self.images, self.batch_size)
            for name, pair in assignment.items():
                key = (name, (int(pair[0]), int(pair[1])))
                if key in self.measured:
                    continue
                load_params_(self.qmodel, {name: self.table.entry(name, pair)})
                self.measured[key] = measure_kl(self.qmodel, self.images, self._float_logits, self.batch_size)
        finally:
            load_params_(self.qmodel, saved)
        return {name: self.measured[(name, (int(p[0]), int(p[1])))] for name, p in assignment.items()}

    @torch.no_grad()
    def whole(self, assignment: Mapping[str, Pair]) -> float:
        """KL to float of the whole model with every layer at its assigned entry."""
        layers = quant_layers(self.qmodel)
        saved = {name: layer.params for name, layer in layers.items()}
        try:
            if self._float_logits is None:
                load_params_(self.qmodel, {})
                self._float_logits = predict_logits(self.qmodel, self.images, self.batch_size)
            load_params_(self.qmodel, self.table.select(assignment))
            return measure_kl(self.qmodel, self.images, self._float_logits, self.batch_size)
        finally:
            load_params_(self.qmodel, saved)


def interaction_ratio(layer_kl: LayerKL, assignment: Mapping[str, Pair]) -> float:
    """``rho``: whole-model KL at ``assignment`` over the sum of its layers' KLs alone (module doc; clamped)."""
    alone = sum(layer_kl(assignment).values())
    if alone <= 1e-12:
        return 1.0
    return float(min(max(layer_kl.whole(assignment) / alone, RHO_RANGE[0]), RHO_RANGE[1]))


def measure_layer_kl(qmodel: nn.Module, table: ParamTable, images: torch.Tensor, assignment: Mapping[str, Pair],
                     batch_size: int = 64) -> dict[str, float]:
    """KL to float (nats per image) when only one layer at a time runs with its assigned table entry."""
    return LayerKL(qmodel, table, images, batch_size)(assignment)


def update_layer_factors(sens: SensitivityTable, assignment: Mapping[str, Pair], measured: Mapping[str, float],
                         type_aware: bool) -> None:
    """Fold measured / predicted of every assigned layer into ``sens.layer_factors`` (module doc)."""
    for name, (w, a) in assignment.items():
        predicted = sens.omega(name, w, a, type_aware=type_aware)
        if predicted <= 1e-12 or measured[name] <= 0:
            continue
        ratio = (sens.layer_factors.get(name, 1.0) ** 2 * measured[name] / predicted) ** 0.5
        sens.layer_factors[name] = float(min(max(ratio, FACTOR_RANGE[0]), FACTOR_RANGE[1]))


def iterate(solve: Callable[[], object], sens: SensitivityTable, layer_kl: LayerKL, rounds: int, type_aware: bool,
            progress: Callable[[float], None]) -> tuple[object, list[dict]]:
    """Solve, then up to ``rounds`` corrections (module doc); returns the last result and the per-round log."""
    result = solve()
    log = [{"round": 0, "objective": result.objective, "solve_time": result.solve_time}]
    for index in range(1, rounds + 1):
        assignment = dict(result.assignment)
        rho = interaction_ratio(layer_kl, assignment)
        measured = {name: kl * rho for name, kl in layer_kl(assignment).items()}
        update_layer_factors(sens, assignment, measured, type_aware)
        result = solve()
        changed = sum(result.assignment[n] != assignment[n] for n in assignment)
        log.append({"round": index, "objective": result.objective, "changed_layers": changed, "rho": rho,
                    "solve_time": result.solve_time, "measured_layers": len(layer_kl.measured)})
        progress(index / max(rounds, 1))
        if changed == 0:
            break
    return result, log
