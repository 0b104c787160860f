"""Pareto sweeps through the API: a job with ``method.sweep`` reports its curve (report and report.html, drawn in
headless Chromium), ``POST /v1/jobs/{id}/pareto`` solves any budget's curve again from the stored tables, and the
typed clients and ``mpq pareto`` call it. The job runs in-process with the worker's ``execute_job`` on SQLite and
PostgreSQL (one real job per backend)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import uuid
import zipfile
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.auth.service import create_key
from service.client import AsyncMPQClient, ConflictError, MPQClient, ParetoCurve, ValidationError
from service.settings import Settings

from .conftest import error_of, row_counts
from .helpers import run_job_here
from .live import LiveServer

pytestmark = pytest.mark.slow

SWEEP = 8
BUDGET = 5.0
#: The cheapest real mixed-precision job: built-in ViT and digits, 16 calibration images, min-max ranges.
SPEC: dict[str, Any] = {
    "name": "sweep",
    "model": {"name": "builtin:vit-digits"},
    "data": {"num_calibration": 16, "batch_size": 16},
    "method": {
        "quantizer": "minmax",
        "range_search": "minmax",
        "budgets": {"wbits": BUDGET},
        "candidate_wbits": [3, 4, 6, 8],
        "candidate_abits": [8],
        "sweep": SWEEP,
        "sweep_budget": "wbits",
        "target": "sim",
    },
    "device": "cpu",
    "preset": "quick",
}


@pytest.fixture(scope="module")
def sweep_job(client: TestClient, settings: Settings) -> dict[str, Any]:
    """The finished sweep job: ``{"id", "headers", "key", "tenant"}``."""
    with client.app.state.session_factory() as session:
        created = create_key(session, f"pareto-{uuid.uuid4().hex[:8]}")
    headers = {"Authorization": f"Bearer {created.key}"}
    response = client.post("/v1/jobs", headers=headers, json=SPEC)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    run_job_here(client, settings, job_id)
    job = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
    assert job["status"] == "succeeded", job["error"]
    return {"id": job_id, "headers": headers, "key": created.key, "tenant": created.tenant}


def _objectives_never_increase(points: list[dict[str, Any]]) -> list[float]:
    """The feasible points' objectives in increasing budget value, checked non-increasing (a looser budget never
    predicts a larger loss); returns them."""
    feasible = [p for p in sorted(points, key=lambda p: p["value"]) if p["objective"] is not None]
    objectives = [p["objective"] for p in feasible]
    for looser, tighter in zip(objectives[1:], objectives[:-1], strict=True):
        assert looser <= tighter + 1e-9 * max(1.0, abs(tighter)), objectives
    return objectives


# ---- the job's own sweep -----------------------------------------------------------------------------------
def test_a_sweep_job_reports_its_pareto_curve(client: TestClient, sweep_job: dict[str, Any]) -> None:
    report = client.get(f"/v1/jobs/{sweep_job['id']}/report", headers=sweep_job["headers"])
    assert report.status_code == 200, report.text
    pareto = report.json()["result"]["pareto"]
    chosen = [p for p in pareto if p["chosen"]]
    assert len(chosen) == 1 and chosen[0]["value"] == pytest.approx(BUDGET)
    swept = [p for p in pareto if not p["chosen"]]
    assert len(swept) == SWEEP, pareto  # the sweep's points, plus the job's own budget marked chosen
    assert all(p["budget"] == "wbits" and "assignment" not in p for p in pareto)
    objectives = _objectives_never_increase(pareto)
    assert (
        objectives[0] > objectives[-1] > 0
    )  # 3 bits everywhere predicts more loss than the unconstrained end
    metrics = report.json()["result"]["metrics"]
    assert chosen[0]["objective"] == pytest.approx(metrics["predicted_kl"], rel=1e-6)
    assert metrics["bits"]["weights_avg"] <= BUDGET + 1e-6

    bundle = client.get(f"/v1/jobs/{sweep_job['id']}/artifact", headers=sweep_job["headers"])
    with zipfile.ZipFile(io.BytesIO(bundle.content)) as archive:
        assert json.loads(archive.read("report.json"))["pareto"] == pareto
        html = archive.read("report.html").decode()
    assert html.count('class="pareto-point') == len(pareto) and html.count("pareto-chosen") == 1


# ---- POST /v1/jobs/{id}/pareto ------------------------------------------------------------------------------
def test_pareto_solves_the_curve_from_the_stored_tables(
    client: TestClient, sweep_job: dict[str, Any]
) -> None:
    url = f"/v1/jobs/{sweep_job['id']}/pareto"
    response = client.post(url, headers=sweep_job["headers"], json={"budget": "wbits"})
    assert response.status_code == 200, response.text
    curve = response.json()
    assert curve["job_id"] == sweep_job["id"] and curve["budget"] == "wbits" and curve["unit"]
    assert curve["chosen"] == pytest.approx(BUDGET)
    swept = [p for p in curve["points"] if not p["chosen"]]
    assert len(swept) == 32
    values = [p["value"] for p in swept]
    assert values == sorted(values) and 3.0 - 1e-6 <= values[0] < values[-1] <= 8.0 + 1e-6
    objectives = _objectives_never_increase(curve["points"])
    assert len(objectives) >= 31 and objectives[0] > objectives[-1]
    for point in curve["points"]:
        if point["objective"] is not None:  # the optimal allocation meets the swept limit
            assert point["wbits_avg"] <= point["value"] + 1e-6
        assert point["predicted_latency_ms"] is None  # a sim job has no latency table

    # explicit values: exactly those (plus the job's own budget), each with its optimum
    response = client.post(url, headers=sweep_job["headers"], json={"budget": "wbits", "values": [4.5, 7.0]})
    assert response.status_code == 200, response.text
    points = response.json()["points"]
    assert sorted(p["value"] for p in points if not p["chosen"]) == pytest.approx([4.5, 7.0])
    by_value = {round(p["value"], 6): p for p in points if not p["chosen"]}
    assert by_value[7.0]["objective"] <= by_value[4.5]["objective"]

    # a budget the job does not have: swept alone over its range, the job's own budgets kept
    response = client.post(url, headers=sweep_job["headers"], json={"budget": "size", "points": 4})
    assert response.status_code == 200, response.text
    assert response.json()["chosen"] is None and len(response.json()["points"]) == 4


def test_pareto_refuses_what_it_cannot_sweep(
    client: TestClient, session, settings: Settings, sweep_job: dict[str, Any], make_tenant
) -> None:
    url = f"/v1/jobs/{sweep_job['id']}/pareto"
    headers = sweep_job["headers"]

    # another tenant's job is not found (the same answer as an unknown id)
    other = make_tenant("other")
    response = client.post(url, headers=other.headers, json={"budget": "wbits"})
    assert response.status_code == 404 and error_of(response)["code"] == "job_not_found"
    response = client.post(f"/v1/jobs/{uuid.uuid4()}/pareto", headers=headers, json={"budget": "wbits"})
    assert response.status_code == 404 and error_of(response)["code"] == "job_not_found"

    # latency budgets need a latency table: only onnxruntime-cpu jobs measure one
    response = client.post(url, headers=headers, json={"budget": "latency_ms"})
    error = error_of(response)
    assert response.status_code == 422 and error["code"] == "invalid_budget", error
    assert "onnxruntime-cpu" in error["message"] and "/" not in error["message"].replace(
        "onnxruntime-cpu", ""
    )

    for body, needle in [
        ({"budget": "joules"}, "unknown budget 'joules'"),
        ({"budget": "wbits", "points": 1}, "points"),
        ({"budget": "wbits", "points": 257}, "points"),
        ({"budget": "wbits", "values": [4.0, -1.0]}, "positive"),
        ({"budget": "wbits", "values": []}, "values"),
        ({"budget": "wbits", "extra": 1}, "extra"),
    ]:
        response = client.post(url, headers=headers, json=body)
        error = error_of(response)
        assert response.status_code == 422 and error["code"] == "validation_error", (body, error)
        assert needle in error["message"], (body, error["message"])
    cap = settings.allocate_max_time_limit
    response = client.post(url, headers=headers, json={"budget": "wbits", "time_limit": cap + 1})
    assert response.status_code == 422 and error_of(response)["code"] == "invalid_time_limit"

    # no sensitivity table yet (queued) or ever (uniform precision): 409, and nothing is written
    queued = client.post("/v1/jobs", headers=headers, json=SPEC).json()["id"]
    uniform_spec = {**SPEC, "method": {"quantizer": "minmax", "wbits": 8, "abits": 8}}
    uniform = client.post("/v1/jobs", headers=headers, json=uniform_spec).json()["id"]
    before = row_counts(session, sweep_job["tenant"])
    for job_id in (queued, uniform):
        response = client.post(f"/v1/jobs/{job_id}/pareto", headers=headers, json={"budget": "wbits"})
        error = error_of(response)
        assert response.status_code == 409 and error["code"] == "sensitivity_unavailable", error
        assert "queued" in error["message"]
    assert row_counts(session, sweep_job["tenant"]) == before
    for job_id in (queued, uniform):
        client.post(f"/v1/jobs/{job_id}/cancel", headers=headers)


def test_reallocating_a_sweep_job(client: TestClient, sweep_job: dict[str, Any]) -> None:
    url = f"/v1/jobs/{sweep_job['id']}/reallocate"
    response = client.post(url, headers=sweep_job["headers"], json={"budgets": {"latency": 0.5}})
    error = error_of(response)
    assert response.status_code == 422 and error["code"] == "invalid_budget", error
    assert "target='onnxruntime-cpu'" in error["message"] and "Value error" not in error["message"]

    # the parent swept wbits; the new job has no wbits budget, so it sweeps its first budget
    response = client.post(url, headers=sweep_job["headers"], json={"budgets": {"abits": 8.0}})
    assert response.status_code == 202, response.text
    child = response.json()
    method = child["spec"]["method"]
    assert "sweep_budget" not in method and method["sweep"] == SWEEP and method["budgets"] == {"abits": 8.0}
    stages = {stage["name"]: stage for stage in child["stages"]}
    assert (
        stages["sensitivity"]["status"] == "reused"
        and stages["sensitivity"]["reused_from"] == sweep_job["id"]
    )
    assert stages["latency"]["status"] == "pending"  # the sim parent skipped it: nothing to reuse
    client.post(f"/v1/jobs/{child['id']}/cancel", headers=sweep_job["headers"])


# ---- typed clients and the command line -------------------------------------------------------------------
def test_clients_and_cli_sweep_a_finished_job(
    settings: Settings, sweep_job: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from service.cli import main

    with LiveServer(settings) as live:
        with MPQClient(live.url, sweep_job["key"]) as client:
            curve = client.pareto(sweep_job["id"], "wbits", points=16)
            assert isinstance(curve, ParetoCurve)
            assert len([p for p in curve.points if not p.chosen]) == 16 and curve.chosen == pytest.approx(
                BUDGET
            )
            assert curve.points[0].status and curve.points[-1].wbits_avg is not None
            exact = client.pareto(sweep_job["id"], "wbits", values=[4.0, 6.0], time_limit=2.0)
            assert sorted(p.value for p in exact.points if not p.chosen) == pytest.approx([4.0, 6.0])
            with pytest.raises(ValidationError) as refused:
                client.pareto(sweep_job["id"], "latency")
            assert refused.value.code == "invalid_budget"

        async def sweep_async() -> ParetoCurve:
            async with AsyncMPQClient(live.url, sweep_job["key"]) as client:
                return await client.pareto(sweep_job["id"], "wbits", points=4)

        curve = asyncio.run(sweep_async())
        assert len([p for p in curve.points if not p.chosen]) == 4

        options = ["--url", live.url, "--key", sweep_job["key"]]
        assert main(["pareto", sweep_job["id"], "--budget", "wbits", "--points", "16", *options]) == 0
        table = capsys.readouterr().out.splitlines()
        assert table[0].startswith("budget wbits") and len(table) == 2 + 17
        assert sum(line.startswith("*") for line in table) == 1
        assert (
            main(["pareto", sweep_job["id"], "--budget", "wbits", "--values", "4,6", "--json", *options]) == 0
        )
        assert json.loads(capsys.readouterr().out)["budget"] == "wbits"
        with MPQClient(live.url, sweep_job["key"]) as client:
            queued = client.submit(SPEC)
            with pytest.raises(ConflictError):
                client.pareto(queued.id, "wbits")
            client.cancel(queued.id)
        assert main(["pareto", str(uuid.uuid4()), "--budget", "wbits", *options]) == 1
        assert "job_not_found" in capsys.readouterr().err


# ---- the report drawn in headless Chromium ------------------------------------------------------------------
#: The chosen point's fill in report.html (quant.report_html).
CHOSEN_RGB = (0xD7, 0x26, 0x3D)


def test_report_html_draws_the_pareto_points_in_chromium(
    client: TestClient, sweep_job: dict[str, Any], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    from PIL import Image

    chromium = request.getfixturevalue("chromium")
    bundle = client.get(f"/v1/jobs/{sweep_job['id']}/artifact", headers=sweep_job["headers"])
    with zipfile.ZipFile(io.BytesIO(bundle.content)) as archive:
        archive.extractall(tmp_path / "bundle")
    pareto = json.loads((tmp_path / "bundle" / "report.json").read_text())["pareto"]
    chromium.events.clear()
    chromium.open((tmp_path / "bundle" / "report.html").as_uri())
    assert chromium.errors() == []
    found = json.loads(
        chromium.evaluate("""JSON.stringify({
            points: document.querySelectorAll('#chart-pareto circle.pareto-point').length,
            chosen: Array.from(document.querySelectorAll('#chart-pareto circle.pareto-chosen')).map(c => {
                const r = c.getBoundingClientRect();
                return {x: r.left + r.width / 2 + window.scrollX, y: r.top + r.height / 2 + window.scrollY,
                        w: r.width, fill: getComputedStyle(c).fill};
            }),
        })""")
    )
    assert found["points"] == len(pareto) == SWEEP + 1
    assert len(found["chosen"]) == 1
    chosen = found["chosen"][0]
    assert chosen["fill"] == "rgb(215, 38, 61)" and chosen["w"] >= 8
    shot = chromium.screenshot(tmp_path / "report.png")
    image = Image.open(io.BytesIO(shot)).convert("RGB")
    cx, cy = round(chosen["x"]), round(chosen["y"])
    assert 0 <= cx < image.width and 0 <= cy < image.height
    near = [image.getpixel((cx + dx, cy + dy)) for dx in range(-2, 3) for dy in range(-2, 3)]
    red = [pixel for pixel in near if all(abs(c - t) <= 12 for c, t in zip(pixel, CHOSEN_RGB, strict=True))]
    assert len(red) >= 20, f"the chosen point is not drawn red at ({cx}, {cy}): {near}"
    far = image.getpixel((cx, max(cy - 40, 0)))  # above it: the chart's background, not the point
    assert any(abs(c - t) > 40 for c, t in zip(far, CHOSEN_RGB, strict=True))
    keep = os.environ.get("MPQ_TEST_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "report.png", Path(keep) / "job-report-pareto.png")


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory):
    """Headless Chromium over the DevTools pipe (``tests/chromium.py``)."""
    from tests.chromium import CHROMIUM, Chromium
    from tests.components import missing_component

    if not CHROMIUM.exists():
        missing_component(
            "headless Chromium not installed: /usr/bin/chromium is missing (apt-get install -y chromium)"
        )
    browser = Chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield browser
    browser.close()
