"""The ZenML side of tracking: which pipeline run an MLflow run belongs to, and the ZenML Model (Model Control Plane)
version a run produced, staged by the same gate that moves the MLflow aliases."""

from __future__ import annotations

from typing import Any, Optional

from zenml import get_step_context, log_metadata

PRODUCTION, STAGING = "production", "staging"


def pipeline_run_tags() -> dict[str, str]:
    """Tags that link the active MLflow run back to its ZenML pipeline run."""
    context = get_step_context()
    return {"zenml.pipeline": context.pipeline.name, "zenml.pipeline_run_id": str(context.pipeline_run.id),
            "zenml.pipeline_run_name": context.pipeline_run.name}


def step_wall_seconds() -> dict[str, float]:
    """Wall time of each step of this pipeline run that has finished (a cached step: the time to find its cache)."""
    from zenml.client import Client

    run = Client().get_pipeline_run(get_step_context().pipeline_run.id)
    return {f"step_seconds_{name}": (step.end_time - step.start_time).total_seconds()
            for name, step in run.steps.items() if step.start_time and step.end_time}


def process_metadata() -> dict[str, Any]:
    """Where the step ran: its process and the GPUs it could see (a step operator may pin them)."""
    import os

    return {"process": {"pid": os.getpid(), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}}


def model_version() -> Optional[Any]:
    """The ZenML Model version this run is attached to (`model:` in the run config), or None."""
    context = get_step_context()
    return context.model if context.model_version else None


def zenml_model_name() -> Optional[str]:
    model = model_version()
    return model.name if model is not None else None


def record_on_model_version(metadata: dict[str, Any], promoted: Optional[bool]) -> Optional[str]:
    """Log metadata on the attached model version and stage it: production if the gate promoted it, else staging
    (the previous production version is archived). Returns the stage, or None when no model is attached."""
    model = model_version()
    if model is None:
        return None
    log_metadata(metadata=metadata, infer_model=True)
    if promoted is None:
        return None
    stage = PRODUCTION if promoted else STAGING
    model.set_stage(stage, force=True)
    return stage
