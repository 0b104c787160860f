"""The progress bar's segments follow the configuration: stages that do not run get no share, the calibration (most
of a quick repq/dopq job) gets a large one, and a real dopq run's progress climbs through its calibration instead of
sitting at 5 %."""

from __future__ import annotations

import pytest

from quant.config import STAGES, DataSpec, MethodSpec, ModelSpec, PipelineConfig
from quant.pipeline import run_pipeline
from quant.progress import progress_segments


def _config(**method) -> PipelineConfig:
    return PipelineConfig(model=ModelSpec(name="builtin:vit-digits"), method=MethodSpec(**method))


@pytest.mark.parametrize(
    "method",
    [
        {"quantizer": "dopq", "budgets": {"wbits": 4.5}},
        {"quantizer": "minmax"},
        {"quantizer": "repq", "budgets": {"wbits": 4}, "reconstruct": "fisher_dplr", "target": "onnxruntime-cpu"},
    ],
    ids=["dopq-mixed", "minmax-uniform", "repq-reconstruct-runtime"],
)
def test_segments_tile_the_bar_in_run_order(method) -> None:
    segments = progress_segments(_config(**method))
    assert list(segments) == list(STAGES)
    position = 0.0
    for name in STAGES:
        start, span = segments[name]
        assert start == pytest.approx(position, abs=1e-12) and span >= 0
        position = start + span
    assert position == pytest.approx(1.0)


def test_stages_that_do_not_run_get_no_share_and_the_calibration_a_large_one() -> None:
    dopq = progress_segments(_config(quantizer="dopq", budgets={"wbits": 4.5}, reconstruct="none"))
    assert dopq["reconstruct"][1] == 0 and dopq["latency"][1] == 0
    assert dopq["calibrate"][1] > 0.3 and dopq["sensitivity"][1] > 0.2
    minmax = progress_segments(_config(quantizer="minmax"))  # no range search, no budgets
    assert minmax["sensitivity"][1] == 0 and minmax["allocate"][1] == 0
    assert minmax["calibrate"][1] < dopq["calibrate"][1]
    onnx = progress_segments(_config(quantizer="minmax", target="onnxruntime-cpu"))
    assert onnx["latency"][1] > 0.1


def test_a_dopq_runs_progress_climbs_through_its_calibration() -> None:
    reports: list[tuple[str, float, str]] = []
    config = PipelineConfig(
        model=ModelSpec(name="builtin:vit-digits"),
        data=DataSpec(num_calibration=32, batch_size=32),
        method=MethodSpec(quantizer="dopq", wbits=4, abits=4),
        device="cpu",
        preset="quick",
    )
    run_pipeline(config, progress=lambda stage, overall, message: reports.append((stage, overall, message)))
    assert {stage for stage, _, _ in reports} <= set(STAGES)
    calibration = [overall for stage, overall, _ in reports if stage == "calibrate"]
    assert len(calibration) >= 5 and calibration == sorted(calibration)
    assert calibration[-1] - calibration[0] > 0.3  # the bar moves through the calibration (it sat at 0.05 before)
    after = [overall for stage, overall, _ in reports if STAGES.index(stage) > STAGES.index("calibrate")]
    assert all(value >= calibration[-1] - 1e-9 for value in after)
    overall = [value for _, value, _ in reports]
    assert overall == sorted(overall) and overall[-1] == pytest.approx(1.0)
