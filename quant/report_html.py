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
import math
from html import escape
from pathlib import Path

__all__ = ["render_report_html", "write_report_html"]

_STAGE_ORDER = ("load", "calibrate", "sensitivity", "latency", "allocate", "reconstruct", "evaluate", "export")
_FLOAT_BITS = 16
#: Sequential colour ramp (light yellow -> dark blue) for the heat map, low to high sensitivity.
_RAMP = ((255, 255, 217), (199, 233, 180), (127, 205, 187), (65, 182, 196), (29, 145, 192), (34, 94, 168),
         (12, 44, 132))
_W_COLOR, _A_COLOR, _T_COLOR = "#3b6fb6", "#e0882b", "#5a9e6f"
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


# ---- small helpers ---------------------------------------------------------------------------------------
def _fmt(value, digits: int = 4) -> str:
    """Human-readable number (None -> "n/a")."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if value != 0 and (abs(value) >= 1e7 or abs(value) < 1e-3):
            return f"{value:.{max(digits - 1, 1)}e}"
        return f"{value:,.{digits}g}" if abs(value) >= 1e4 else f"{value:.{digits}g}"
    return escape(str(value))


def _bytes(value) -> str:
    if not isinstance(value, (int, float)):
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return "n/a"  # pragma: no cover


def _bits_label(bits) -> str:
    return "?" if bits is None else str(bits)


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high]."""
    if not math.isfinite(low) or not math.isfinite(high):
        return [0.0]
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.floor(low / step) * step
    ticks, value = [], start
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def _ramp(t: float) -> str:
    t = min(max(t, 0.0), 1.0) * (len(_RAMP) - 1)
    i = min(int(t), len(_RAMP) - 2)
    f = t - i
    rgb = [round(a + (b - a) * f) for a, b in zip(_RAMP[i], _RAMP[i + 1], strict=True)]
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _svg(chart_id: str, width: float, height: float, body: list[str], label: str) -> str:
    return (f'<svg id="{chart_id}" xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{escape(label)}" '
            f'width="{width:.0f}" height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}">'
            + "".join(body) + "</svg>")


def _text(x: float, y: float, text: str, anchor: str = "start", extra: str = "") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" {extra}>{escape(str(text))}</text>'


def _section(title: str, body: str, section_id: str, sub: str = "") -> str:
    subline = f'<p class="sub">{sub}</p>' if sub else ""
    return f'<section id="{section_id}"><h2>{escape(title)}</h2>{subline}{body}</section>'


def _absent(text: str) -> str:
    return f'<p class="note absent">{escape(text)}</p>'


# ---- sections --------------------------------------------------------------------------------------------
def _metrics_section(report: dict) -> str:
    metrics = report.get("metrics") or {}
    if not metrics:
        return _section("Metrics", _absent("no metrics in this report"), "metrics")
    fl, qu, bits = metrics.get("float") or {}, metrics.get("quantized") or {}, metrics.get("bits") or {}

    def pct(value) -> str:
        return "n/a" if value is None else f"{value:.2f} %"

    cards = [
        ("float top-1", pct(fl.get("top1"))),
        ("quantized top-1", pct(qu.get("top1"))),
        ("top-1 agreement", pct(qu.get("agreement"))),
        ("KL(float || quant)", _fmt(qu.get("kl"))),
        ("avg weight bits", _fmt(bits.get("weights_avg"), 3)),
        ("avg activation bits", _fmt(bits.get("activations_avg"), 3)),
        ("weight size", _bytes(metrics.get("size_bytes"))),
        ("BOPs / image", _fmt(metrics.get("bops"))),
    ]
    html = '<div class="cards">' + "".join(
        f'<div class="card metric"><b>{value}</b><span>{escape(name)}</span></div>' for name, value in cards
    ) + "</div>"
    evaluated = metrics.get("evaluated_on")
    if evaluated:
        html += f'<p class="note">evaluated on the {escape(str(evaluated))} images ({_fmt(metrics.get("images"))})</p>'
    return _section("Metrics", html, "metrics")


def _budgets_section(report: dict) -> str:
    budgets = report.get("budgets") or {}
    if not budgets:
        return _section("Budgets", _absent("uniform precision: no budgets"), "budgets")
    rows = "".join(
        f"<tr><td>{escape(name)}</td><td class=num>{_fmt(b.get('limit'))}</td><td class=num>{_fmt(b.get('used'))}"
        f"</td><td class=num>{_fmt(b.get('min_achievable'))}</td></tr>"
        for name, b in budgets.items() if isinstance(b, dict)
    )
    table = f"<table><tr><th>budget</th><th>limit</th><th>used</th><th>min achievable</th></tr>{rows}</table>"
    return _section("Budgets", table, "budgets")


def _bits_chart(report: dict) -> str:
    allocation = report.get("allocation") or {}
    if not allocation:
        return _section("Bit assignment", _absent("no per-layer allocation in this report"), "bits")
    names = list(allocation)
    label_w, plot_w, row_h, top = 210, 520, 16, 28
    fp_pos, x_max = 9.0, 9.6  # bits 2..8 on a linear axis, float (16) drawn at 9 as "FP"
    height = top + row_h * len(names) + 10
    width = label_w + plot_w + 70

    def x_of(bits: float) -> float:
        return label_w + plot_w * min(bits, x_max) / x_max

    def pos(bits) -> float:
        return fp_pos if bits is None or bits >= _FLOAT_BITS else float(bits)

    body = []
    for tick in (0, 2, 4, 6, 8):
        body.append(f'<line x1="{x_of(tick):.1f}" x2="{x_of(tick):.1f}" y1="{top - 4}" y2="{height - 8}" '
                    'stroke="#e3e6ea"/>')
        body.append(_text(x_of(tick), top - 8, str(tick), "middle"))
    body.append(f'<line x1="{x_of(fp_pos):.1f}" x2="{x_of(fp_pos):.1f}" y1="{top - 4}" y2="{height - 8}" '
                'stroke="#e3e6ea" stroke-dasharray="3 3"/>')
    body.append(_text(x_of(fp_pos), top - 8, "16 (float)", "middle"))
    for i, name in enumerate(names):
        entry = allocation[name] or {}
        wbits, abits = entry.get("wbits"), entry.get("abits")
        y = top + i * row_h
        body.append(_text(label_w - 8, y + 11, name, "end", 'class="layer-label"'))
        has_w = wbits is not None and not (name.endswith(("matmul_qk", "matmul_av")) and wbits >= _FLOAT_BITS)
        if has_w:
            body.append(f'<rect class="bar-w" x="{label_w}" y="{y + 2}" width="{x_of(pos(wbits)) - label_w:.1f}" '
                        f'height="6" fill="{_W_COLOR}"><title>{escape(name)}: weights '
                        f'{_bits_label(wbits)} bits</title></rect>')
        if abits is not None:
            body.append(f'<rect class="bar-a" x="{label_w}" y="{y + 8}" width="{x_of(pos(abits)) - label_w:.1f}" '
                        f'height="6" fill="{_A_COLOR}"><title>{escape(name)}: activations '
                        f'{_bits_label(abits)} bits</title></rect>')
        tag = f"W{_bits_label(wbits)} A{_bits_label(abits)}" if has_w else f"A{_bits_label(abits)}"
        body.append(_text(x_of(x_max) + 6, y + 11, tag, "start", 'class="bits-tag"'))
    legend = (f'<div class="legend"><span><i class="sw" style="background:{_W_COLOR}"></i>weight bits</span>'
              f'<span><i class="sw" style="background:{_A_COLOR}"></i>activation bits</span></div>')
    chart = _svg("chart-bits", width, height, body, "per-layer bit assignment")
    return _section("Bit assignment", legend + chart, "bits",
                    f"{len(names)} quantization layers in forward order; matmuls have no weights")


def _sensitivity_chart(report: dict) -> str:
    table = ((report.get("sensitivity") or {}).get("table")) or {}
    weight, act = table.get("weight") or {}, table.get("act") or {}
    if not weight and not act:
        return _section("Sensitivity", _absent("no sensitivity table (uniform precision run)"), "sensitivity")
    names = list(dict.fromkeys([*weight, *act]))
    wcands = sorted({int(b) for d in weight.values() for b in d})
    acands = sorted({int(b) for d in act.values() for b in d})
    columns = [("w", b) for b in wcands] + [("a", b) for b in acands]
    allocation = report.get("allocation") or {}
    values = [float(v) for d in (*weight.values(), *act.values()) for v in d.values() if v is not None and v > 0]
    lo, hi = (math.log10(min(values)), math.log10(max(values))) if values else (0.0, 1.0)
    span = max(hi - lo, 1e-9)
    label_w, cell_w, cell_h, top, gap = 210, 34, 14, 34, 10
    width = label_w + cell_w * len(columns) + gap + 20
    height = top + cell_h * len(names) + 60

    def col_x(index: int) -> float:
        return label_w + index * cell_w + (gap if index >= len(wcands) else 0)

    body = []
    if wcands:
        body.append(_text(col_x(0) + cell_w * len(wcands) / 2, 12, "weight bits", "middle"))
    if acands:
        body.append(_text(col_x(len(wcands)) + cell_w * len(acands) / 2, 12, "activation bits", "middle"))
    for j, (kind, bits) in enumerate(columns):
        body.append(_text(col_x(j) + cell_w / 2, top - 6, f"{kind.upper()}{bits}", "middle"))
    for i, name in enumerate(names):
        y = top + i * cell_h
        body.append(_text(label_w - 8, y + 11, name, "end"))
        chosen = allocation.get(name) or {}
        for j, (kind, bits) in enumerate(columns):
            source = (weight if kind == "w" else act).get(name) or {}
            value = source.get(str(bits), source.get(bits))
            x = col_x(j)
            if value is None:
                body.append(f'<rect class="cell empty" x="{x:.1f}" y="{y}" width="{cell_w - 1}" height="{cell_h - 1}" '
                            f'fill="#eef0f3"><title>{escape(name)} {kind.upper()}{bits}: not a candidate</title></rect>')
                continue
            value = float(value)
            t = (math.log10(value) - lo) / span if value > 0 else 0.0
            picked = chosen.get("wbits" if kind == "w" else "abits") == bits
            stroke = ' stroke="#d7263d" stroke-width="2"' if picked else ""
            body.append(f'<rect class="cell{" chosen" if picked else ""}" x="{x:.1f}" y="{y}" width="{cell_w - 1}" '
                        f'height="{cell_h - 1}" fill="{_ramp(t)}"{stroke}><title>{escape(name)} {kind.upper()}{bits}: '
                        f'omega {_fmt(value)}{" (chosen)" if picked else ""}</title></rect>')
    # colour bar
    bar_y, bar_w = height - 34, min(260, cell_w * max(len(columns), 4))
    for k in range(40):
        body.append(f'<rect x="{label_w + k * bar_w / 40:.1f}" y="{bar_y}" width="{bar_w / 40 + 0.5:.1f}" height="10" '
                    f'fill="{_ramp(k / 39)}"/>')
    body.append(_text(label_w, bar_y + 24, _fmt(10**lo, 3), "start"))
    body.append(_text(label_w + bar_w, bar_y + 24, _fmt(10**hi, 3), "end"))
    body.append(_text(label_w - 8, bar_y + 9, "omega (log)", "end"))
    chart = _svg("chart-sensitivity", width, height, body, "sensitivity heat map")
    factors = table.get("type_factors") or {}
    note = ""
    if factors:
        note = '<p class="note">type factors: ' + ", ".join(
            f"{escape(k)} {_fmt(v, 3)}" for k, v in sorted(factors.items())) + "</p>"
    return _section("Sensitivity", chart + note, "sensitivity",
                    "Fisher loss increase per layer and candidate bit-width (nats per image, before type factors); "
                    "red outline = chosen")


def _pareto_chart(report: dict) -> str:
    points = [p for p in (report.get("pareto") or []) if isinstance(p, dict)
              and isinstance(p.get("value"), (int, float)) and isinstance(p.get("objective"), (int, float))]
    if not points:
        return _section("Pareto curve", _absent("no sweep: this job solved a single budget"), "pareto")
    width, height, left, right, top, bottom = 640, 340, 70, 20, 20, 46
    budgets = list(dict.fromkeys(str(p.get("budget", "")) for p in points))
    measured = _measured_points(report, points)
    xs = [float(p["value"]) for p in points] + [m[0] for m in measured]
    ys = [float(p["objective"]) for p in points]
    xt, yt = _nice_ticks(min(xs), max(xs)), _nice_ticks(min(ys), max(ys))
    x0, x1, y0, y1 = xt[0], xt[-1], yt[0], yt[-1]

    def sx(v: float) -> float:
        return left + (width - left - right) * (v - x0) / ((x1 - x0) or 1)

    def sy(v: float) -> float:
        return height - bottom - (height - top - bottom) * (v - y0) / ((y1 - y0) or 1)

    body = [f'<line x1="{left}" x2="{width - right}" y1="{height - bottom}" y2="{height - bottom}" stroke="#888"/>',
            f'<line x1="{left}" x2="{left}" y1="{top}" y2="{height - bottom}" stroke="#888"/>']
    for t in xt:
        body.append(_text(sx(t), height - bottom + 15, _fmt(t, 3), "middle"))
    for t in yt:
        body.append(f'<line x1="{left}" x2="{width - right}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="#eef0f3"/>')
        body.append(_text(left - 6, sy(t) + 4, _fmt(t, 3), "end"))
    body.append(_text((left + width - right) / 2, height - 8, f"budget value ({', '.join(budgets)})", "middle"))
    body.append(_text(14, (top + height - bottom) / 2, "objective (predicted loss)", "middle",
                      f'transform="rotate(-90 14 {(top + height - bottom) / 2:.0f})"'))
    ordered = sorted(points, key=lambda p: float(p["value"]))
    path = " ".join(f"{sx(float(p['value'])):.1f},{sy(float(p['objective'])):.1f}" for p in ordered)
    body.append(f'<polyline class="pareto-line" points="{path}" fill="none" stroke="{_W_COLOR}" stroke-width="1.5"/>')
    for p in ordered:
        chosen = bool(p.get("chosen"))
        cls, r, fill = ("pareto-point pareto-chosen", 6, "#d7263d") if chosen else ("pareto-point", 3.5, _W_COLOR)
        body.append(f'<circle class="{cls}" cx="{sx(float(p["value"])):.1f}" cy="{sy(float(p["objective"])):.1f}" '
                    f'r="{r}" fill="{fill}"><title>{escape(str(p.get("budget", "")))} = {_fmt(float(p["value"]))}: '
                    f'objective {_fmt(float(p["objective"]))}{" (chosen)" if chosen else ""}</title></circle>')
    for x, objective, chosen in measured:
        body.append(f'<rect class="pareto-measured" x="{sx(x) - 4:.1f}" y="{sy(objective) - 4:.1f}" width="8" '
                    f'height="8" fill="none" stroke="#1b998b" stroke-width="2"><title>measured on the runtime: '
                    f'{_fmt(x)}{" (chosen)" if chosen else ""}, objective {_fmt(objective)}</title></rect>')
    chart = _svg("chart-pareto", width, height, body, "Pareto curve of the budget sweep")
    legend = ('<p class="note">green squares: points exported to ONNX and measured on the runtime, at their measured '
              "latency</p>") if measured else ""
    return _section("Pareto curve", chart + legend, "pareto", "predicted loss of the optimal assignment per budget; "
                    "red = the chosen point")


def _measured_points(report: dict, points: list[dict]) -> list[tuple[float, float, bool]]:
    """``(x in the budget's unit, objective, chosen)`` of the sweep points measured on the runtime (latency
    budgets only: the measured milliseconds, or their fraction of the fp32 model)."""
    fp32 = (report.get("latency") or {}).get("fp32_ms")
    out = []
    for p in points:
        ms = p.get("measured_latency_ms")
        if not isinstance(ms, (int, float)) or p.get("budget") not in ("latency", "latency_ms"):
            continue
        if p["budget"] == "latency":
            if not isinstance(fp32, (int, float)) or fp32 <= 0:
                continue
            ms = ms / fp32
        out.append((float(ms), float(p["objective"]), bool(p.get("chosen"))))
    return out


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
        others = ", ".join(f"{escape(str(f))} {_fmt(ms, 3)}" for f, ms in forms.items())
        rows.append(f'<tr class="layer-latency"><td>{escape(name)}</td><td>{escape(str(entry.get("form")))}</td>'
                    f"<td class=num>{_fmt(entry.get('ms'), 4)}</td><td class=note>{others}</td></tr>")
    cards = [
        ("fp32 model (measured)", _fmt(latency.get("fp32_ms"), 3) + " ms"),
        ("predicted", _fmt(latency.get("predicted_ms"), 3) + " ms"),
        ("measured", _fmt(latency.get("measured_ms"), 3) + " ms"),
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
                 f'{_fmt(latency.get("rest_ms"), 3)} ms</p>')
    if rows:
        html += ("<table><tr><th>layer</th><th>form</th><th>ms</th><th>every form (ms)</th></tr>"
                 + "".join(rows) + "</table>")
    return _section("Deployment", html, "deployment", "per-layer latency of the chosen form on the target runtime")


def _timings_chart(report: dict) -> str:
    timings = {k: float(v) for k, v in (report.get("timings") or {}).items() if isinstance(v, (int, float))}
    if not timings:  # the export stage writes the report before the run's timings are final: use the stages'
        stages = report.get("stages") or {}
        timings = {k: float(v["seconds"]) for k, v in stages.items()
                   if isinstance(v, dict) and isinstance(v.get("seconds"), (int, float))}
    if not timings:
        return _section("Stage timings", _absent("no timings in this report"), "timings")
    names = [s for s in _STAGE_ORDER if s in timings] + [s for s in timings if s not in _STAGE_ORDER]
    label_w, plot_w, row_h, top = 110, 460, 20, 8
    height, width = top + row_h * len(names) + 8, label_w + plot_w + 90
    longest = max(max(timings.values()), 1e-9)
    body = []
    for i, name in enumerate(names):
        y = top + i * row_h
        w = max(plot_w * timings[name] / longest, 1.0)
        body.append(_text(label_w - 8, y + 13, name, "end"))
        body.append(f'<rect class="bar-t" x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 6}" '
                    f'fill="{_T_COLOR}"><title>{escape(name)}: {timings[name]:.3f} s</title></rect>')
        body.append(_text(label_w + w + 6, y + 13, f"{timings[name]:.2f} s"))
    chart = _svg("chart-timings", width, height, body, "stage timings")
    return _section("Stage timings", chart, "timings", f"total {sum(timings.values()):.2f} s")


def _rounds_section(report: dict) -> str:
    allocate = ((report.get("stages") or {}).get("allocate")) or {}
    rounds = allocate.get("rounds") or []
    if not rounds:
        return ""
    rows = "".join(
        f"<tr><td class=num>{_fmt(r.get('round'))}</td><td class=num>{_fmt(r.get('objective'))}</td>"
        f"<td class=num>{_fmt(r.get('changed_layers'))}</td><td class=num>{_fmt(r.get('solve_time'), 3)}</td></tr>"
        for r in rounds if isinstance(r, dict)
    )
    solver = allocate.get("solver") or {}
    note = ""
    if solver:
        backend = f" ({escape(str(solver['backend']))})" if solver.get("backend") else ""
        note = (f'<p class="note">solver{backend}: status {escape(str(solver.get("status", "n/a")))}, optimal '
                f'{_fmt(solver.get("optimal"))}, gap {_fmt(solver.get("gap"))}</p>')
    return _section("Allocation rounds", note + "<table><tr><th>round</th><th>objective</th><th>changed layers</th>"
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
        _budgets_section(report),
        _bits_chart(report),
        _sensitivity_chart(report),
        _pareto_chart(report),
        _deployment_section(report),
        _rounds_section(report),
        _timings_chart(report),
        _section("Configuration", f"<details><summary>job configuration (JSON)</summary><pre>{raw}</pre></details>",
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
