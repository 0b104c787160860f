"""Experiment tracking of jobs (MLflow): one run per job, enabled by ``MPQ_MLFLOW_TRACKING_URI``."""

from service.tracking.mlflow_tracker import track_job

__all__ = ["track_job"]
