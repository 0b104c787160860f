"""What a finished job leaves behind: the bundle zip and the per-layer rows of its result.

:func:`write_bundle` zips the pipeline's output folder; :func:`bundle_sections` copies the report sections the
job's result repeats; :func:`layer_rows` turns the result's allocation and sensitivity table into
:class:`~service.models.JobLayer` rows (what ``GET /v1/jobs/{id}/layers`` lists).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import zipfile
from pathlib import Path
from typing import Any

from service.jsonable import jsonable
from service.models import JobLayer

__all__ = ["BUNDLE_REPORT_SECTIONS", "bundle_sections", "layer_rows", "write_bundle"]


def write_bundle(output_dir: Path, bundle: Path) -> tuple[str, int]:
    """Zip the files of ``output_dir`` into ``bundle`` (atomically) and return its sha256 and size."""
    tmp = bundle.with_suffix(".zip.part")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(output_dir.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(output_dir).as_posix())
    os.replace(tmp, bundle)
    digest = hashlib.sha256()
    with bundle.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest(), bundle.stat().st_size


#: Sections of the bundle's report.json that the job's result (``GET /v1/jobs/{id}/report``) repeats: the Pareto
#: curve of a sweep (``method.sweep``) and the latency summary of an ``onnxruntime-cpu`` job.
BUNDLE_REPORT_SECTIONS = ("pareto", "latency")


def bundle_sections(output_dir: Path) -> dict[str, Any]:
    """The :data:`BUNDLE_REPORT_SECTIONS` the export stage wrote to ``output_dir/report.json`` (absent: none)."""
    try:
        report = json.loads((output_dir / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(report, dict):
        return {}
    return {key: report[key] for key in BUNDLE_REPORT_SECTIONS if report.get(key) not in (None, [], {})}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _layer_sensitivity(
    table: dict[str, Any], name: str, wbits: int | None, abits: int | None, form: str | None = None
) -> float | None:
    """Predicted loss increase of a layer at its chosen bits from the sensitivity table
    (``table.weight[layer][wbits] + table.act[layer][abits]``; a missing side counts as 0). Tables of a runtime
    target (``onnxruntime-cpu``) are keyed by form name: ``form_weight[layer][form] + form_act[layer][form]``."""
    if table.get("target", "sim") != "sim":
        if form is None:
            return None
        sides = (("form_weight", form), ("form_act", form))
    else:
        sides = (("weight", str(wbits)), ("act", str(abits)))
    parts = [_number(((table.get(key) or {}).get(name) or {}).get(entry)) for key, entry in sides]
    known = [part for part in parts if part is not None]
    return sum(known) if known else None


def layer_rows(job_id: uuid.UUID, result: dict[str, Any]) -> list[JobLayer]:
    """Per-layer rows from the result's ``allocation`` (``{layer: {"wbits", "abits", ...}}``) and sensitivity."""
    allocation = result.get("allocation") or {}
    sensitivity = result.get("sensitivity") or {}
    table = sensitivity.get("table") if isinstance(sensitivity, dict) else None
    table = table if isinstance(table, dict) else {}
    components = table.get("components") or {}
    rows = []
    for position, (name, entry) in enumerate(allocation.items()):
        entry = entry if isinstance(entry, dict) else {}
        wbits, abits = _number(entry.get("wbits")), _number(entry.get("abits"))
        wbits_int = int(wbits) if wbits is not None else None
        abits_int = int(abits) if abits is not None else None
        details = {key: item for key, item in entry.items() if key not in {"wbits", "abits"}}
        if name in components:
            details.setdefault("component", components[name])
        rows.append(
            JobLayer(
                job_id=job_id,
                name=str(name)[:200],
                position=position,
                wbits=wbits_int,
                abits=abits_int,
                sensitivity=_layer_sensitivity(table, name, wbits_int, abits_int,
                                               entry.get("form") if isinstance(entry.get("form"), str) else None),
                details=jsonable(details),
            )
        )
    return rows
