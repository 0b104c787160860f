"""The ``mixed`` section of ``bench/accuracy.py``: LampQ mixed precision against uniform precision on a built-in.

Every number goes through ``quant.pipeline.run_pipeline`` on the 256-image calibration split and the 500-image test
split; dopq, PTQ only (no reconstruction), default calibration (the output-aware search) unless a row says
``minmax``. Mixed jobs use LampQ as published: type-aware Fisher sensitivity, the ILP and the iterative update
(``iterative_rounds=3``); the rows ``no iterative update`` show the ILP on the sensitivity table alone. Budgets:
average weight bits 2.5 / 3 / 3.5 / 4 and the exact averages of uniform W3A4 and W4A4 (their 8-bit patch embedding and
head included), each with the average input bits of uniform W4A4 ("A4"). The jobs of one model share their
``calibrate`` and ``sensitivity`` stages (what a reallocation does); only ``allocate`` and later stages run per budget.

Tables: KL to float and top-1 per job with the predicted KL (the ILP's objective) and measured / predicted; then the
dominance check: for each mixed job, every uniform job at equal or fewer average weight bits, and whether the mixed job
has the lower KL (uniform must never be better at equal or fewer bits).
"""

from __future__ import annotations

from quant.config import DataSpec, MethodSpec, ModelSpec, PipelineConfig
from quant.pipeline import InMemoryStageStore, run_pipeline

__all__ = ["section_mixed"]

ROUNDS = 3
WBITS = (2.5, 3.0, 3.5, 4.0)
_SHARED = ("calibrate", "sensitivity")


def _config(model: str, **method) -> PipelineConfig:
    return PipelineConfig(model=ModelSpec(name=f"builtin:{model}"), data=DataSpec(num_calibration=256),
                          method=MethodSpec(quantizer="dopq", **method), seed=0, device="cpu")


class _Jobs:
    """Mixed jobs of one model and range search that share the calibrate and sensitivity stages."""

    def __init__(self, model: str, search: str) -> None:
        self.model, self.search = model, search
        self.first = InMemoryStageStore()
        self.shared: dict | None = None

    def run(self, budgets: dict, rounds: int):
        store = self.first if self.shared is None else InMemoryStageStore(outputs=self.shared,
                                                                           blob_dir=self.first.blob_dir)
        result = run_pipeline(_config(self.model, budgets=budgets, iterative_rounds=rounds,
                                      range_search=self.search), store=store)
        if self.shared is None:
            self.shared = {name: self.first.load(name) for name in _SHARED}
        return result


def _row(label: str, result) -> list[str]:
    m = result.metrics
    predicted = m.get("predicted_kl")
    kl = m["quantized"]["kl"]
    return [label, f"{m['bits']['weights_avg']:.3f}", f"{m['bits']['activations_avg']:.3f}", f"{kl:.5f}",
            f"{m['quantized']['top1']:.2f}", "-" if predicted is None else f"{predicted:.5f}",
            "-" if not predicted else f"{kl / predicted:.2f}"]


def section_mixed(model: str, markdown: bool, printer) -> None:
    """Run the section for ``model`` (``vit-digits``/``swin-digits``) and print its tables with ``printer``."""
    uniform = {w: run_pipeline(_config(model, wbits=w, abits=4)) for w in (3, 4)}
    abits = uniform[4].metrics["bits"]["activations_avg"]
    rows = [_row(f"uniform W{w}A4", r) for w, r in uniform.items()]
    searched, minmax = _Jobs(model, "auto"), _Jobs(model, "minmax")
    mixed = []
    targets = sorted({*WBITS, *(r.metrics["bits"]["weights_avg"] for r in uniform.values())})
    for wbits in targets:
        result = searched.run({"wbits": wbits, "abits": abits}, ROUNDS)
        mixed.append(result)
        rows.append(_row(f"mixed W<={wbits:.3f}/A4", result))
        print(f"  done mixed {wbits:.3f}", flush=True)
    for w, reference in uniform.items():
        budgets = {"wbits": reference.metrics["bits"]["weights_avg"], "abits": abits}
        rows.append(_row(f"mixed W<={budgets['wbits']:.3f}/A4, no iterative update", searched.run(budgets, 0)))
        rows.append(_row(f"mixed W<={budgets['wbits']:.3f}/A4, range_search minmax", minmax.run(budgets, ROUNDS)))
        print(f"  done W{w} variants", flush=True)
    printer(f"{model}: mixed (LampQ, {ROUNDS} iterative rounds) vs uniform, dopq, PTQ only",
            ["job", "avg W bits", "avg A bits", "KL", "top-1 %", "predicted KL", "measured / predicted"],
            rows, markdown)
    checks = []
    for result in mixed:
        mixed_bits, mixed_kl = result.metrics["bits"]["weights_avg"], result.metrics["quantized"]["kl"]
        for w, reference in uniform.items():
            bits, kl = reference.metrics["bits"]["weights_avg"], reference.metrics["quantized"]["kl"]
            if bits <= mixed_bits + 1e-9:
                checks.append([f"{mixed_bits:.3f}", f"{mixed_kl:.5f}", f"uniform W{w}A4 ({bits:.3f} bits)",
                               f"{kl:.5f}", "yes" if mixed_kl < kl else "NO"])
    printer(f"{model}: is any uniform job better at equal or fewer bits than a mixed one?",
            ["mixed avg W bits", "mixed KL", "uniform job at <= bits", "uniform KL", "mixed lower"], checks, markdown)
