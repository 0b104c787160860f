"""A job's report as one self-contained HTML page with server-side SVG charts (no JavaScript, no CDN).

``write_report_html(report, path)`` renders the ``report`` dict that the pipeline's export stage builds (and that
``report.json`` holds): metrics, budgets, the per-layer bit assignment, the sensitivity heat map (layer x candidate
bit-width), the Pareto curve of a budget sweep with the chosen point (``report["pareto"]``, a list of
``{"budget", "value", "objective", "chosen"}``, optionally ``measured_latency_ms``; "no sweep" when absent), the
deployment section of a runtime target (per-layer form and measured milliseconds, predicted against measured
whole-model latency, onnxruntime against the simulation; ``report["latency"]`` and ``metrics["deployment"]``),
allocation rounds and stage timings.
Every section copes with a missing or partial input and says what is absent instead of failing.

Chart elements carry stable ids and classes (``#chart-bits rect.bar-w``, ``#chart-sensitivity rect.cell``,
``#chart-pareto circle.pareto-point``, ``#chart-pareto rect.pareto-measured`` (a point exported and measured on
the runtime, drawn at its measured latency), ``#chart-timings rect.bar-t``, ``#deployment tr.layer-latency``) so tests and users can find them; every mark
has an SVG ``<title>`` that browsers show as a tooltip.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

from quant.report_charts import bits_chart, pareto_chart, sensitivity_chart, timings_chart
from quant.report_markup import absent, fmt, fmt_bytes, section
from quant.report_synthetic import synthetic_section

__all__ = ["render_report_html", "write_report_html"]

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d232b;background:#f5f6f8}
main{max-width:1100px;margin:0 auto;padding:20px 28px 60px}
h1{font-size:1.5rem;margin:.4rem 0 .2rem}h2{font-size:1.15rem;margin:0 0 .6rem}
section{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:16px 20px;margin:16px 0}
.sub{color:#5b6470;margin:0 0 .5rem}.note{color:#5b6470;font-size:.9rem}
table{border-collapse:collapse;font-size:.92rem}td,th{padding:4px 12px 4px 0;text-align:left;vertical-align:top}
th{color:#5b6470;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:flex;flex-wrap:wrap;gap:12px}.card{border:1px solid #dde1e6;border-radius:6px;padding:8px 14px;
min-width:140px}.card b{display:block;font-size:1.25rem}.card span{color:#5b6470;font-size:.85rem}
svg{display:block;max-width:100%;height:auto}svg text{font-size:11px;fill:#1d232b}
.legend{display:flex;gap:16px;font-size:.85rem;margin:.3rem 0}.sw{display:inline-block;width:12px;height:12px;
margin-right:5px;vertical-align:-1px;border-radius:2px}pre{background:#f5f6f8;padding:10px;overflow:auto;
font-size:.8rem;max-height:420px}
"""


def _metrics_section(report: dict) -> str:
    metrics = report.get("metrics") or {}
    if not metrics:
        return section("Metrics", absent("no metrics in this report"), "metrics")
    fl, qu, bits = metrics.get("float") or {}, metrics.get("quantized") or {}, metrics.get("bits") or {}

    def pct(value) -> str:
        return "n/a" if value is None else f"{value:.2f} %"

    cards = [
        ("float top-1", pct(fl.get("top1"))),
        ("quantized top-1", pct(qu.get("top1"))),
        ("top-1 agreement", pct(qu.get("agreement"))),
        ("KL(float || quant)", fmt(qu.get("kl"))),
        ("avg weight bits", fmt(bits.get("weights_avg"), 3)),
        ("avg activation bits", fmt(bits.get("activations_avg"), 3)),
        ("weight size", fmt_bytes(metrics.get("size_bytes"))),
        ("BOPs / image", fmt(metrics.get("bops"))),
    ]
    html = '<div class="cards">' + "".join(
        f'<div class="card metric"><b>{value}</b><span>{escape(name)}</span></div>' for name, value in cards
    ) + "</div>"
    evaluated = metrics.get("evaluated_on")
    if evaluated:
        html += f'<p class="note">evaluated on the {escape(str(evaluated))} images ({fmt(metrics.get("images"))})</p>'
    return section("Metrics", html, "metrics")


def _budgets_section(report: dict) -> str:
    budgets = report.get("budgets") or {}
    if not budgets:
        return section("Budgets", absent("uniform precision: no budgets"), "budgets")
    rows = "".join(
        f"<tr><td>{escape(name)}</td><td class=num>{fmt(b.get('limit'))}</td><td class=num>{fmt(b.get('used'))}"
        f"</td><td class=num>{fmt(b.get('min_achievable'))}</td></tr>"
        for name, b in budgets.items() if isinstance(b, dict)
    )
    table = f"<table><tr><th>budget</th><th>limit</th><th>used</th><th>min achievable</th></tr>{rows}</table>"
    return section("Budgets", table, "budgets")


def _deployment_section(report: dict) -> str:
    latency = report.get("latency") or {}
    deployment = (report.get("metrics") or {}).get("deployment") or {}
    if not latency and not deployment:
        return ""
    rows = []
    for name, entry in (latency.get("layers") or {}).items():
        if not isinstance(entry, dict):
            continue
        forms = entry.get("forms_ms") or {}
        others = ", ".join(f"{escape(str(f))} {fmt(ms, 3)}" for f, ms in forms.items())
        rows.append(f'<tr class="layer-latency"><td>{escape(name)}</td><td>{escape(str(entry.get("form")))}</td>'
                    f"<td class=num>{fmt(entry.get('ms'), 4)}</td><td class=note>{others}</td></tr>")
    cards = [
        ("fp32 model (measured)", fmt(latency.get("fp32_ms"), 3) + " ms"),
        ("predicted", fmt(latency.get("predicted_ms"), 3) + " ms"),
        ("measured", fmt(latency.get("measured_ms"), 3) + " ms"),
        ("onnxruntime top-1", "n/a" if deployment.get("onnx_top1") is None else f"{deployment['onnx_top1']:.2f} %"),
        ("torch top-1", "n/a" if deployment.get("torch_top1") is None else f"{deployment['torch_top1']:.2f} %"),
        ("top-1 agreement", "n/a" if deployment.get("agreement") is None else f"{deployment['agreement']:.2f} %"),
    ]
    html = '<div class="cards">' + "".join(
        f'<div class="card deploy"><b>{value}</b><span>{escape(name)}</span></div>' for name, value in cards) + "</div>"
    key = latency.get("key") or {}
    if key:
        html += (f'<p class="note">measured with {escape(str(key.get("runtime", "")))} on '
                 f'{escape(str(key.get("cpu", "")))}, batch 1; rest of the model (softmax, LayerNorm, GELU, adds): '
                 f'{fmt(latency.get("rest_ms"), 3)} ms</p>')
    if rows:
        html += ("<table><tr><th>layer</th><th>form</th><th>ms</th><th>every form (ms)</th></tr>"
                 + "".join(rows) + "</table>")
    return section("Deployment", html, "deployment", "per-layer latency of the chosen form on the target runtime")


def _rounds_section(report: dict) -> str:
    allocate = ((report.get("stages") or {}).get("allocate")) or {}
    rounds = allocate.get("rounds") or []
    if not rounds:
        return ""
    rows = "".join(
        f"<tr><td class=num>{fmt(r.get('round'))}</td><td class=num>{fmt(r.get('objective'))}</td>"
        f"<td class=num>{fmt(r.get('changed_layers'))}</td><td class=num>{fmt(r.get('solve_time'), 3)}</td></tr>"
        for r in rounds if isinstance(r, dict)
    )
    solver = allocate.get("solver") or {}
    note = ""
    if solver:
        backend = f" ({escape(str(solver['backend']))})" if solver.get("backend") else ""
        note = (f'<p class="note">solver{backend}: status {escape(str(solver.get("status", "n/a")))}, optimal '
                f'{fmt(solver.get("optimal"))}, gap {fmt(solver.get("gap"))}</p>')
    return section("Allocation rounds", note + "<table><tr><th>round</th><th>objective</th><th>changed layers</th>"
                    f"<th>solve time (s)</th></tr>{rows}</table>", "rounds")


def render_report_html(report: dict) -> str:
    """The report page as an HTML string."""
    report = report if isinstance(report, dict) else {}
    config = report.get("config") or {}
    model = (config.get("model") or {}).get("name", "model")
    method = config.get("method") or {}
    subtitle = ", ".join(f"{k} {escape(str(method[k]))}" for k in ("quantizer", "reconstruct") if k in method)
    raw = escape(json.dumps(config, indent=2, default=str))
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>mpq report: {escape(str(model))}</title><style>{_CSS}</style></head><body><main>",
        f'<h1>Quantization report: {escape(str(model))}</h1><p class="sub">{subtitle}</p>',
        _metrics_section(report),
        synthetic_section(report),  # data-free jobs: the synthetic calibration images (quant.report_synthetic)
        _budgets_section(report),
        bits_chart(report),
        sensitivity_chart(report),
        pareto_chart(report),
        _deployment_section(report),
        _rounds_section(report),
        timings_chart(report),
        section("Configuration", f"<details><summary>job configuration (JSON)</summary><pre>{raw}</pre></details>",
                 "config"),
        "</main></body></html>",
    ]
    return "\n".join(p for p in parts if p)


def write_report_html(report: dict, path: str | Path) -> Path:
    """Write the report page for ``report`` to ``path`` (a single offline HTML file) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report_html(report), encoding="utf-8")
    return path
