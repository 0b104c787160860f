"""The HTML report: content of every section, graceful gaps, escaping, and rendering in headless Chromium.

The browser test drives Debian's ``chromium`` (``/usr/bin/chromium``; skipped when absent, the CI installs it) over
the DevTools protocol on a pipe (``--remote-debugging-pipe``, no extra packages): it loads the page from a file URL,
collects console errors, uncaught exceptions and error log entries (failed resource loads), counts the charts'
elements in the live DOM and saves a full-page PNG screenshot. A deliberately broken page checks that the error
collection works.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
from pathlib import Path

import pytest

from quant.report_html import render_report_html, write_report_html
from tests.chromium import CHROMIUM, Chromium
from tests.components import missing_component

WBITS, ABITS = (2, 3, 4, 5, 6, 8), (3, 4, 5, 6, 8)


def _layer_names(depth: int = 6) -> list[str]:
    names = ["patch_embed.proj"]
    for i in range(depth):
        names += [f"blocks.{i}.attn.{c}" for c in ("qkv", "matmul_qk", "matmul_av", "proj")]
        names += [f"blocks.{i}.mlp.fc1", f"blocks.{i}.mlp.fc2"]
    return names + ["head"]


def _report(pareto: bool = True) -> dict:
    names = _layer_names()
    allocation, weight, act = {}, {}, {}
    for i, name in enumerate(names):
        matmul = "matmul" in name
        allocation[name] = {"wbits": 16 if matmul else WBITS[i % len(WBITS)], "abits": ABITS[i % len(ABITS)]}
        weight[name] = {} if matmul else {str(b): 10.0 ** (-(b + i % 3)) for b in WBITS}
        act[name] = {str(b): 10.0 ** (-(b / 2 + i % 4)) for b in ABITS}
    report = {
        "config": {"model": {"name": "builtin:vit-digits"}, "method": {"quantizer": "dopq", "reconstruct": "none"}},
        "metrics": {"float": {"top1": 97.4}, "quantized": {"top1": 95.2, "kl": 0.0421, "agreement": 96.8},
                    "bits": {"weights_avg": 4.02, "activations_avg": 5.1}, "size_bytes": 351_234.0,
                    "bops": 2.1e9, "evaluated_on": "evaluation", "images": 500},
        "allocation": allocation,
        "sensitivity": {"table": {"components": {n: n.rsplit(".", 1)[-1] for n in names}, "weight": weight,
                                  "act": act, "type_factors": {"qkv": 1.3, "fc1": 0.8}}},
        "budgets": {"wbits": {"limit": 4.0, "used": 4.02, "min_achievable": 2.0}},
        "timings": {"load": 0.8, "sensitivity": 12.5, "allocate": 0.4, "reconstruct": 0.0, "evaluate": 3.1,
                    "export": 0.6, "calibrate": 2.2},
        "stages": {"allocate": {"rounds": [{"round": 0, "objective": 0.12, "solve_time": 0.05},
                                           {"round": 1, "objective": 0.1, "changed_layers": 3, "solve_time": 0.04}],
                                "solver": {"backend": "highs", "status": "optimal", "optimal": True}}},
    }
    if pareto:
        report["pareto"] = [{"budget": "wbits", "value": v, "objective": 0.5 / v, "chosen": v == 4.0}
                            for v in (2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 8.0)]
    return report


# ---- content ---------------------------------------------------------------------------------------------
def test_every_chart_has_its_marks():
    html = render_report_html(_report())
    n = len(_layer_names())
    matmuls = sum("matmul" in name for name in _layer_names())
    assert html.count('class="bar-w"') == n - matmuls
    assert html.count('class="bar-a"') == n
    cells = len(re.findall(r'<rect class="cell[ "]', html))
    assert cells == n * (len(WBITS) + len(ABITS))
    assert len(re.findall(r'class="cell chosen"', html)) == (n - matmuls) + n
    assert html.count('class="pareto-point"') == 7 and html.count('class="pareto-point pareto-chosen"') == 1
    assert html.count('class="bar-t"') == 7
    for needle in ("97.40 %", "95.20 %", "96.80 %", "343.0 KiB", "highs", "type factors", "W2 A3"):
        assert needle in html


def test_self_contained_and_offline():
    html = render_report_html(_report())
    assert "<script" not in html
    assert not re.search(r"(src|href)=\"?(https?:)?//", html)
    assert html.startswith("<!DOCTYPE html>")


def test_missing_sections_are_explained():
    html = render_report_html(_report(pareto=False) | {"sensitivity": None, "budgets": {}})
    assert "no sweep" in html
    assert "no sensitivity table" in html
    assert "uniform precision: no budgets" in html
    empty = render_report_html({})
    for phrase in ("no metrics", "no per-layer allocation", "no sensitivity table", "no sweep", "no timings"):
        assert phrase in empty


def test_timings_fall_back_to_stage_seconds():
    report = _report() | {"timings": {}}
    report["stages"] = {"load": {"seconds": 1.5}, "evaluate": {"seconds": 2.0}, "allocate": {"rounds": []}}
    html = render_report_html(report)
    assert html.count('class="bar-t"') == 2 and "total 3.50 s" in html


def test_text_is_escaped():
    report = _report()
    report["config"]["model"]["name"] = "<script>alert(1)</script>"
    report["allocation"] = {"<b>evil</b>": {"wbits": 4, "abits": 4}}
    html = render_report_html(report)
    assert "<script>alert" not in html and "&lt;script&gt;" in html
    assert "<b>evil</b>" not in html


def test_write_report_html(tmp_path):
    path = write_report_html(_report(), tmp_path / "sub" / "report.html")
    assert path == tmp_path / "sub" / "report.html"
    assert path.read_text(encoding="utf-8") == render_report_html(_report())


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    if not CHROMIUM.exists():
        missing_component("headless Chromium not installed: /usr/bin/chromium is missing (apt-get install -y chromium)")
    browser = Chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield browser
    browser.close()


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_error_collection_works(chromium, tmp_path):
    broken = tmp_path / "broken.html"
    broken.write_text('<html><body><img src="missing.png"><script>console.error("boom"); nope();</script>'
                      "</body></html>")
    chromium.events.clear()
    chromium.open(broken.as_uri())
    errors = chromium.errors()
    assert any("boom" in e for e in errors)
    assert any("nope is not defined" in e for e in errors)
    assert any("Failed to load resource" in e for e in errors)


def test_report_renders_in_chromium(chromium, tmp_path):
    page = write_report_html(_report(), tmp_path / "report.html")
    chromium.events.clear()
    chromium.open(page.as_uri())
    assert chromium.errors() == []
    counts = chromium.evaluate("""JSON.stringify({
        bars_w: document.querySelectorAll('#chart-bits rect.bar-w').length,
        bars_a: document.querySelectorAll('#chart-bits rect.bar-a').length,
        cells: document.querySelectorAll('#chart-sensitivity rect.cell').length,
        points: document.querySelectorAll('#chart-pareto circle.pareto-point').length,
        chosen: document.querySelectorAll('#chart-pareto circle.pareto-chosen').length,
        timings: document.querySelectorAll('#chart-timings rect.bar-t').length,
        metrics: document.querySelectorAll('#metrics .metric').length,
        bits_width: document.querySelector('#chart-bits').getBoundingClientRect().width,
        heat_height: document.querySelector('#chart-sensitivity').getBoundingClientRect().height,
    })""")
    counts = json.loads(counts)
    n, matmuls = len(_layer_names()), sum("matmul" in name for name in _layer_names())
    assert counts["bars_w"] == n - matmuls and counts["bars_a"] == n
    assert counts["cells"] == n * (len(WBITS) + len(ABITS))
    assert counts["points"] == 8 and counts["chosen"] == 1
    assert counts["timings"] == 7 and counts["metrics"] == 8
    assert counts["bits_width"] > 300 and counts["heat_height"] > 300
    shot = chromium.screenshot(tmp_path / "report.png")
    width, height = _png_size(shot)
    assert width >= 1000 and height > 2000
    keep = os.environ.get("MPQ_TEST_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "report.png", Path(keep) / "report.png")
