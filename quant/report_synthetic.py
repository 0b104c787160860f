"""The report page's section for a data-free job: the synthetic calibration images as an embedded PNG grid.

Reads ``report["synthetic"]`` (written by ``quant.synthetic.preview.preview_report``): the grid as base64 PNG,
the number of images, Adam steps, seed, generation seconds and the patch-similarity entropy before and after.
Kept apart from ``quant.report_html`` (which calls :func:`synthetic_section`) and free of torch.
"""

from __future__ import annotations

from html import escape

__all__ = ["synthetic_section"]


def synthetic_section(report: dict) -> str:
    """HTML section ``#synthetic`` with the grid image; empty for a job with real calibration data."""
    synthetic = report.get("synthetic") if isinstance(report, dict) else None
    if not isinstance(synthetic, dict) or not synthetic.get("grid_png"):
        return ""
    png = str(synthetic["grid_png"])
    entropy = synthetic.get("entropy") or {}
    facts = [f"{synthetic.get('images')} images", f"{synthetic.get('steps')} Adam steps",
             f"seed {synthetic.get('seed')}"]
    if isinstance(synthetic.get("seconds"), int | float):
        facts.append(f"generated in {synthetic['seconds']:.1f} s")
    if isinstance(entropy.get("first"), int | float) and isinstance(entropy.get("last"), int | float):
        facts.append(f"patch-similarity entropy {entropy['first']:.3f} -> {entropy['last']:.3f} nats")
    labels = synthetic.get("labels_shown") or []
    caption = f"first {len(labels)} images; labels (the float model's predictions): {' '.join(map(str, labels))}"
    accuracy = (report.get("metrics") or {}).get("accuracy")
    if isinstance(accuracy, str):
        caption += f". Accuracy {accuracy}"
    return (f'<section id="synthetic"><h2>Synthetic calibration images</h2><p class="sub">{escape(", ".join(facts))}'
            f'</p><img class="synthetic-grid" alt="synthetic calibration images" '
            f'src="data:image/png;base64,{escape(png)}"><p class="note">{escape(caption)}</p></section>')
