"""Formatting and markup helpers of the report page: numbers for people, HTML sections and SVG pieces.

Nothing here knows a report's layout; :mod:`quant.report_charts` and :mod:`quant.report_html` build on these.
"""

from __future__ import annotations

import math
from html import escape

__all__ = [
    "A_COLOR",
    "T_COLOR",
    "W_COLOR",
    "absent",
    "bits_label",
    "fmt",
    "fmt_bytes",
    "nice_ticks",
    "ramp",
    "section",
    "svg",
    "svg_text",
]

#: Sequential colour ramp (light yellow -> dark blue) for the heat map, low to high sensitivity.
RAMP = ((255, 255, 217), (199, 233, 180), (127, 205, 187), (65, 182, 196), (29, 145, 192), (34, 94, 168),
        (12, 44, 132))
#: Colours of weight bits, activation bits and stage-timing bars.
W_COLOR, A_COLOR, T_COLOR = "#3b6fb6", "#e0882b", "#5a9e6f"


def fmt(value, digits: int = 4) -> str:
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


def fmt_bytes(value) -> str:
    if not isinstance(value, (int, float)):
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return "n/a"  # pragma: no cover


def bits_label(bits) -> str:
    return "?" if bits is None else str(bits)


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
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


def ramp(t: float) -> str:
    t = min(max(t, 0.0), 1.0) * (len(RAMP) - 1)
    i = min(int(t), len(RAMP) - 2)
    f = t - i
    rgb = [round(a + (b - a) * f) for a, b in zip(RAMP[i], RAMP[i + 1], strict=True)]
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def svg(chart_id: str, width: float, height: float, body: list[str], label: str) -> str:
    return (f'<svg id="{chart_id}" xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{escape(label)}" '
            f'width="{width:.0f}" height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}">'
            + "".join(body) + "</svg>")


def svg_text(x: float, y: float, text: str, anchor: str = "start", extra: str = "") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" {extra}>{escape(str(text))}</text>'


def section(title: str, body: str, section_id: str, sub: str = "") -> str:
    subline = f'<p class="sub">{sub}</p>' if sub else ""
    return f'<section id="{section_id}"><h2>{escape(title)}</h2>{subline}{body}</section>'


def absent(text: str) -> str:
    return f'<p class="note absent">{escape(text)}</p>'
