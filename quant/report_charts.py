"""The report page's SVG charts: bit assignment, sensitivity heat map, Pareto curve and stage timings.

Each function takes the ``report`` dict and returns one ``<section>``; a missing or partial input gives a
section that says what is absent. Chart elements carry the stable ids and classes listed in
:mod:`quant.report_html`, and every mark has an SVG ``<title>`` (a browser tooltip).
"""

from __future__ import annotations

import math
from html import escape

from quant.report_markup import (
    A_COLOR,
    T_COLOR,
    W_COLOR,
    absent,
    bits_label,
    fmt,
    nice_ticks,
    ramp,
    section,
    svg,
    svg_text,
)

__all__ = ["bits_chart", "pareto_chart", "sensitivity_chart", "timings_chart"]

#: Stages in pipeline order (the timings chart's rows; unknown stages follow).
STAGE_ORDER = ("load", "synthesize", "calibrate", "sensitivity", "latency", "allocate", "reconstruct", "evaluate",
               "export")
#: Bits at or above which a layer is float.
FLOAT_BITS = 16


def bits_chart(report: dict) -> str:
    allocation = report.get("allocation") or {}
    if not allocation:
        return section("Bit assignment", absent("no per-layer allocation in this report"), "bits")
    names = list(allocation)
    label_w, plot_w, row_h, top = 210, 520, 16, 28
    fp_pos, x_max = 9.0, 9.6  # bits 2..8 on a linear axis, float (16) drawn at 9 as "FP"
    height = top + row_h * len(names) + 10
    width = label_w + plot_w + 70

    def x_of(bits: float) -> float:
        return label_w + plot_w * min(bits, x_max) / x_max

    def pos(bits) -> float:
        return fp_pos if bits is None or bits >= FLOAT_BITS else float(bits)

    body = []
    for tick in (0, 2, 4, 6, 8):
        body.append(f'<line x1="{x_of(tick):.1f}" x2="{x_of(tick):.1f}" y1="{top - 4}" y2="{height - 8}" '
                    'stroke="#e3e6ea"/>')
        body.append(svg_text(x_of(tick), top - 8, str(tick), "middle"))
    body.append(f'<line x1="{x_of(fp_pos):.1f}" x2="{x_of(fp_pos):.1f}" y1="{top - 4}" y2="{height - 8}" '
                'stroke="#e3e6ea" stroke-dasharray="3 3"/>')
    body.append(svg_text(x_of(fp_pos), top - 8, "16 (float)", "middle"))
    for i, name in enumerate(names):
        entry = allocation[name] or {}
        wbits, abits = entry.get("wbits"), entry.get("abits")
        y = top + i * row_h
        body.append(svg_text(label_w - 8, y + 11, name, "end", 'class="layer-label"'))
        has_w = wbits is not None and not (name.endswith(("matmul_qk", "matmul_av")) and wbits >= FLOAT_BITS)
        if has_w:
            body.append(f'<rect class="bar-w" x="{label_w}" y="{y + 2}" width="{x_of(pos(wbits)) - label_w:.1f}" '
                        f'height="6" fill="{W_COLOR}"><title>{escape(name)}: weights '
                        f'{bits_label(wbits)} bits</title></rect>')
        if abits is not None:
            body.append(f'<rect class="bar-a" x="{label_w}" y="{y + 8}" width="{x_of(pos(abits)) - label_w:.1f}" '
                        f'height="6" fill="{A_COLOR}"><title>{escape(name)}: activations '
                        f'{bits_label(abits)} bits</title></rect>')
        tag = f"W{bits_label(wbits)} A{bits_label(abits)}" if has_w else f"A{bits_label(abits)}"
        body.append(svg_text(x_of(x_max) + 6, y + 11, tag, "start", 'class="bits-tag"'))
    legend = (f'<div class="legend"><span><i class="sw" style="background:{W_COLOR}"></i>weight bits</span>'
              f'<span><i class="sw" style="background:{A_COLOR}"></i>activation bits</span></div>')
    chart = svg("chart-bits", width, height, body, "per-layer bit assignment")
    return section("Bit assignment", legend + chart, "bits",
                    f"{len(names)} quantization layers in forward order; matmuls have no weights")


def sensitivity_chart(report: dict) -> str:
    table = ((report.get("sensitivity") or {}).get("table")) or {}
    weight, act = table.get("weight") or {}, table.get("act") or {}
    if not weight and not act:
        return section("Sensitivity", absent("no sensitivity table (uniform precision run)"), "sensitivity")
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
        body.append(svg_text(col_x(0) + cell_w * len(wcands) / 2, 12, "weight bits", "middle"))
    if acands:
        body.append(svg_text(col_x(len(wcands)) + cell_w * len(acands) / 2, 12, "activation bits", "middle"))
    for j, (kind, bits) in enumerate(columns):
        body.append(svg_text(col_x(j) + cell_w / 2, top - 6, f"{kind.upper()}{bits}", "middle"))
    for i, name in enumerate(names):
        y = top + i * cell_h
        body.append(svg_text(label_w - 8, y + 11, name, "end"))
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
                        f'height="{cell_h - 1}" fill="{ramp(t)}"{stroke}><title>{escape(name)} {kind.upper()}{bits}: '
                        f'omega {fmt(value)}{" (chosen)" if picked else ""}</title></rect>')
    # colour bar
    bar_y, bar_w = height - 34, min(260, cell_w * max(len(columns), 4))
    for k in range(40):
        body.append(f'<rect x="{label_w + k * bar_w / 40:.1f}" y="{bar_y}" width="{bar_w / 40 + 0.5:.1f}" height="10" '
                    f'fill="{ramp(k / 39)}"/>')
    body.append(svg_text(label_w, bar_y + 24, fmt(10**lo, 3), "start"))
    body.append(svg_text(label_w + bar_w, bar_y + 24, fmt(10**hi, 3), "end"))
    body.append(svg_text(label_w - 8, bar_y + 9, "omega (log)", "end"))
    chart = svg("chart-sensitivity", width, height, body, "sensitivity heat map")
    factors = table.get("type_factors") or {}
    note = ""
    if factors:
        note = '<p class="note">type factors: ' + ", ".join(
            f"{escape(k)} {fmt(v, 3)}" for k, v in sorted(factors.items())) + "</p>"
    return section("Sensitivity", chart + note, "sensitivity",
                    "Fisher loss increase per layer and candidate bit-width (nats per image, before type factors); "
                    "red outline = chosen")


def pareto_chart(report: dict) -> str:
    points = [p for p in (report.get("pareto") or []) if isinstance(p, dict)
              and isinstance(p.get("value"), (int, float)) and isinstance(p.get("objective"), (int, float))]
    if not points:
        return section("Pareto curve", absent("no sweep: this job solved a single budget"), "pareto")
    width, height, left, right, top, bottom = 640, 340, 70, 20, 20, 46
    budgets = list(dict.fromkeys(str(p.get("budget", "")) for p in points))
    measured = _measured_points(report, points)
    xs = [float(p["value"]) for p in points] + [m[0] for m in measured]
    ys = [float(p["objective"]) for p in points]
    xt, yt = nice_ticks(min(xs), max(xs)), nice_ticks(min(ys), max(ys))
    x0, x1, y0, y1 = xt[0], xt[-1], yt[0], yt[-1]

    def sx(v: float) -> float:
        return left + (width - left - right) * (v - x0) / ((x1 - x0) or 1)

    def sy(v: float) -> float:
        return height - bottom - (height - top - bottom) * (v - y0) / ((y1 - y0) or 1)

    body = [f'<line x1="{left}" x2="{width - right}" y1="{height - bottom}" y2="{height - bottom}" stroke="#888"/>',
            f'<line x1="{left}" x2="{left}" y1="{top}" y2="{height - bottom}" stroke="#888"/>']
    for t in xt:
        body.append(svg_text(sx(t), height - bottom + 15, fmt(t, 3), "middle"))
    for t in yt:
        body.append(f'<line x1="{left}" x2="{width - right}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="#eef0f3"/>')
        body.append(svg_text(left - 6, sy(t) + 4, fmt(t, 3), "end"))
    body.append(svg_text((left + width - right) / 2, height - 8, f"budget value ({', '.join(budgets)})", "middle"))
    body.append(svg_text(14, (top + height - bottom) / 2, "objective (predicted loss)", "middle",
                      f'transform="rotate(-90 14 {(top + height - bottom) / 2:.0f})"'))
    ordered = sorted(points, key=lambda p: float(p["value"]))
    path = " ".join(f"{sx(float(p['value'])):.1f},{sy(float(p['objective'])):.1f}" for p in ordered)
    body.append(f'<polyline class="pareto-line" points="{path}" fill="none" stroke="{W_COLOR}" stroke-width="1.5"/>')
    for p in ordered:
        chosen = bool(p.get("chosen"))
        cls, r, fill = ("pareto-point pareto-chosen", 6, "#d7263d") if chosen else ("pareto-point", 3.5, W_COLOR)
        body.append(f'<circle class="{cls}" cx="{sx(float(p["value"])):.1f}" cy="{sy(float(p["objective"])):.1f}" '
                    f'r="{r}" fill="{fill}"><title>{escape(str(p.get("budget", "")))} = {fmt(float(p["value"]))}: '
                    f'objective {fmt(float(p["objective"]))}{" (chosen)" if chosen else ""}</title></circle>')
    for x, objective, chosen in measured:
        body.append(f'<rect class="pareto-measured" x="{sx(x) - 4:.1f}" y="{sy(objective) - 4:.1f}" width="8" '
                    f'height="8" fill="none" stroke="#1b998b" stroke-width="2"><title>measured on the runtime: '
                    f'{fmt(x)}{" (chosen)" if chosen else ""}, objective {fmt(objective)}</title></rect>')
    chart = svg("chart-pareto", width, height, body, "Pareto curve of the budget sweep")
    legend = ('<p class="note">green squares: points exported to ONNX and measured on the runtime, at their measured '
              "latency</p>") if measured else ""
    return section("Pareto curve", chart + legend, "pareto", "predicted loss of the optimal assignment per budget; "
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


def timings_chart(report: dict) -> str:
    timings = {k: float(v) for k, v in (report.get("timings") or {}).items() if isinstance(v, (int, float))}
    if not timings:  # the export stage writes the report before the run's timings are final: use the stages'
        stages = report.get("stages") or {}
        timings = {k: float(v["seconds"]) for k, v in stages.items()
                   if isinstance(v, dict) and isinstance(v.get("seconds"), (int, float))}
    if not timings:
        return section("Stage timings", absent("no timings in this report"), "timings")
    names = [s for s in STAGE_ORDER if s in timings] + [s for s in timings if s not in STAGE_ORDER]
    label_w, plot_w, row_h, top = 110, 460, 20, 8
    height, width = top + row_h * len(names) + 8, label_w + plot_w + 90
    longest = max(max(timings.values()), 1e-9)
    body = []
    for i, name in enumerate(names):
        y = top + i * row_h
        w = max(plot_w * timings[name] / longest, 1.0)
        body.append(svg_text(label_w - 8, y + 13, name, "end"))
        body.append(f'<rect class="bar-t" x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 6}" '
                    f'fill="{T_COLOR}"><title>{escape(name)}: {timings[name]:.3f} s</title></rect>')
        body.append(svg_text(label_w + w + 6, y + 13, f"{timings[name]:.2f} s"))
    chart = svg("chart-timings", width, height, body, "stage timings")
    return section("Stage timings", chart, "timings", f"total {sum(timings.values()):.2f} s")
