"""The HTML report: content of every section, graceful gaps, escaping, and rendering in headless Chromium.

The browser test drives Debian's ``chromium`` (``/usr/bin/chromium``; skipped when absent, the CI installs it) over
the DevTools protocol on a pipe (``--remote-debugging-pipe``, no extra packages): it loads the page from a file URL,
collects console errors, uncaught exceptions and error log entries (failed resource loads), counts the charts'
elements in the live DOM and saves a full-page PNG screenshot. A deliberately broken page checks that the error
collection works.
"""

from __future__ import annotations

import base64
import json
import os
import re
import select
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest

from quant.report_html import render_report_html, write_report_html
from tests.components import missing_component

CHROMIUM = Path("/usr/bin/chromium")
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


# ---- headless Chromium -----------------------------------------------------------------------------------
class _Chromium:
    """Minimal DevTools-protocol client over ``--remote-debugging-pipe`` (fd 3: commands in, fd 4: replies out)."""

    def __init__(self, profile: Path) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        args = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={profile}",
                "--remote-debugging-pipe", "about:blank"]
        wire = f'exec "$0" "$@" 3<&{to_chrome_r} 4>&{from_chrome_w}'  # the pipe ends become chromium's fds 3, 4
        self.proc = subprocess.Popen(["/bin/bash", "-c", wire, *args], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, pass_fds=(to_chrome_r, from_chrome_w))
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._next_id, self._buffer, self.events = 0, b"", []
        self.session = None

    def send(self, method: str, params: dict | None = None, timeout: float = 30.0) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if self.session is not None:
            message["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        reply = self._wait(lambda m: m.get("id") == self._next_id, timeout)
        if "error" in reply:
            raise RuntimeError(f"{method} failed: {reply['error']}")
        return reply.get("result", {})

    def wait_event(self, method: str, timeout: float = 30.0) -> dict:
        return self._wait(lambda m: m.get("method") == method, timeout)

    def _wait(self, matches, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "method" in message:
                    self.events.append(message)
                if matches(message):
                    return message
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise TimeoutError("no answer from chromium")
            ready, _, _ = select.select([self._from_chrome], [], [], left)
            if ready:
                chunk = os.read(self._from_chrome, 1 << 20)
                if not chunk:
                    raise TimeoutError("chromium closed the pipe")
                self._buffer += chunk

    def open(self, url: str, width: int = 1200) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False})
        self.send("Page.navigate", {"url": url})
        self.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str):
        return self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})["result"]["value"]

    def errors(self) -> list[str]:
        self.evaluate("1")  # flush events queued before this point
        found = []
        for event in self.events:
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                found.append(f"{details.get('text', '')} {details.get('exception', {}).get('description', '')}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append(" ".join(str(a.get("value", a.get("description"))) for a in params.get("args", [])))
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                found.append(params["entry"].get("text", "log error"))
        return found

    def screenshot(self, path: Path) -> bytes:
        size = self.send("Page.getLayoutMetrics")["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        data = base64.b64decode(self.send("Page.captureScreenshot",
                                          {"format": "png", "clip": clip, "captureBeyondViewport": True})["data"])
        path.write_bytes(data)
        return data

    def close(self) -> None:
        try:
            self.session = None
            self.send("Browser.close", timeout=10)
        except (TimeoutError, RuntimeError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_chrome)
        os.close(self._from_chrome)


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    if not CHROMIUM.exists():
        missing_component("headless Chromium not installed: /usr/bin/chromium is missing (apt-get install -y chromium)")
    browser = _Chromium(tmp_path_factory.mktemp("chromium-profile"))
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
