"""Quantize from a pipeline: python pipeline.py job.json weights.safetensors calib.safetensors out/"""

import json
import os
import sys
from pathlib import Path

from service.client import MPQClient

spec_file, weights, calib, out = sys.argv[1:5]
spec = json.loads(Path(spec_file).read_text())
with MPQClient(os.environ["MPQ_API_URL"], os.environ["MPQ_API_KEY"]) as mpq:
    spec["model"]["weights_artifact_id"] = mpq.upload(weights, "weights").id
    spec.setdefault("data", {})["artifact_id"] = mpq.upload(calib, "images").id
    job = mpq.wait(mpq.submit(spec).id, on_update=lambda j: print(f"{j.status} {j.progress:.0%}"))
    if job.status != "succeeded":
        sys.exit(f"job {job.id} {job.status}: {job.error}")
    print("bundle:", mpq.download(job.id, out))  # sha256-checked, extracted
