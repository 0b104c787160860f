"""Log a bundle as an MLflow ``python_function`` model: ``MLmodel``, the loader code, the bundle, a signature and
an input example, so that ``mlflow.pyfunc.load_model(uri).predict(images)`` returns the quantized logits.

The model is saved to a temporary folder with :func:`mlflow.pyfunc.save_model` (*models from code*: the loader
is :mod:`service.tracking.pyfunc_model`, copied as source, nothing pickled) and uploaded as the run's ``model``
artifact folder; the registry's versions point there. The signature comes from running the rebuilt model on
the input example: float32 ``[-1, 3, H, W]`` in, float32 ``[-1, classes]`` out.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["MODEL_ARTIFACT_PATH", "log_pyfunc_model"]

#: The run's artifact folder holding the MLflow model (``runs:/<run_id>/model``).
MODEL_ARTIFACT_PATH = "model"
_LOADER = Path(__file__).with_name("pyfunc_model.py")


def _requirements() -> list[str]:
    import timm
    import torch

    import quant

    return [f"mpq=={quant.__version__}", f"torch=={torch.__version__.split('+')[0]}", f"timm=={timm.__version__}"]


def log_pyfunc_model(client: Any, run_id: str, bundle_dir: Path, input_shape: list[int]) -> str:
    """Save the bundle in ``bundle_dir`` (model.safetensors, quant_config.json, ...) as a pyfunc model and log it
    to run ``run_id``; returns the artifact path (``model``). ``input_shape`` is one image's ``[3, H, W]``."""
    import mlflow
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    import quant

    example = np.random.default_rng(0).standard_normal((1, *input_shape)).astype(np.float32)
    with torch.inference_mode():
        logits = quant.load_quantized(bundle_dir, device="cpu")(torch.as_tensor(example)).float().numpy()
    with tempfile.TemporaryDirectory(prefix="mpq-mlflow-") as tmp:
        # copies under neutral names: MLmodel records where its code and artifacts came from
        staging = Path(tmp)
        bundle = shutil.copytree(bundle_dir, staging / "bundle", ignore=shutil.ignore_patterns("*.onnx"))
        loader = shutil.copy(_LOADER, staging / "loader.py")
        mlflow.pyfunc.save_model(
            str(staging / MODEL_ARTIFACT_PATH),
            python_model=str(loader),
            artifacts={"bundle": str(bundle)},
            signature=infer_signature(example, logits),
            input_example=example,
            pip_requirements=_requirements(),
        )
        client.log_artifacts(run_id, str(staging / MODEL_ARTIFACT_PATH), artifact_path=MODEL_ARTIFACT_PATH)
    return MODEL_ARTIFACT_PATH
