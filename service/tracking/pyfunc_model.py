"""The MLflow ``python_function`` flavour of an mpq bundle, logged as *models from code* (no pickle).

MLflow copies this file into the logged model and runs it when the model is loaded
(``mlflow.pyfunc.load_model("models:/NAME/VERSION")``): it rebuilds the quantized model from the bundle folder
stored as the model's ``bundle`` artifact with :func:`quant.load_quantized`, the same loader as everywhere else,
and ``predict(images)`` returns its logits. Input: float32 images ``[N, 3, H, W]`` (a numpy array, or a
DataFrame/dict holding one); output: float32 logits ``[N, classes]``. Loading needs the ``mpq`` package (for
``quant``) and torch in the environment; nothing here imports the service.
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel

__all__ = ["QuantizedBundleModel"]


class QuantizedBundleModel(PythonModel):
    """Logits of the quantized model rebuilt from the ``bundle`` artifact."""

    def load_context(self, context: Any) -> None:
        """Rebuild the model (CPU, eval mode) from the bundle folder."""
        import quant

        self.model = quant.load_quantized(context.artifacts["bundle"], device="cpu")

    def predict(self, context, model_input, params=None):
        """Logits ``[N, classes]`` (float32 numpy) of images ``[N, 3, H, W]`` (float32); no type hints here, as
        MLflow would take them for a schema."""
        import torch

        if isinstance(model_input, dict):
            model_input = next(iter(model_input.values()))
        if hasattr(model_input, "to_numpy"):  # a DataFrame of one tensor column
            model_input = np.stack(model_input.iloc[:, 0].to_numpy())
        images = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.inference_mode():
            return self.model(images).float().numpy()


mlflow.models.set_model(QuantizedBundleModel())
