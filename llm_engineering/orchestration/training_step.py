"""What the SFT and the preference training steps share around their trainer: where checkpoints go, and what a
finished training leaves behind (the adapter model in MLflow, the loss curve, metrics, step metadata, outputs)."""

from __future__ import annotations

import tempfile
from contextlib import nullcontext
from pathlib import Path

from zenml import log_metadata

from llm_engineering import tracking
from llm_engineering.artifacts import CheckpointDir, Report
from llm_engineering.orchestration.checkpoints import checkpoint_location, training_key
from llm_engineering.orchestration.model_control_plane import process_metadata
from llm_engineering.training.curves import loss_curve


def training_checkpoints(train, base_model, initial_adapter: CheckpointDir, data_summary: dict, settings: tuple):
    """The checkpoint directory (a context; None without train.checkpoint_steps), named after everything that makes
    this training what it is: the base, `settings` (the config sections), the rows, the starting adapter's weights."""
    if not train.checkpoint_steps:
        return nullcontext(None)
    key = training_key(base_model.config, base_model.weights_sha256, *settings, data_summary["fingerprint"],
                       files=(initial_adapter.path / "adapter_model.safetensors",))
    return checkpoint_location(key, train.checkpoint_dir)  # mirrored to a remote artifact store


def training_outputs(result, adapter_dir: Path, adapter_params: dict) -> tuple[CheckpointDir, Report]:
    metrics = result.metrics()
    tracking.log_adapter_model(adapter_dir, adapter_params)
    with tempfile.TemporaryDirectory() as plots:
        picture = loss_curve(result.log_history, Path(plots) / "loss_curve.png")
        tracking.log_artifact(picture, "training")
        views = {"loss_curve.png": picture.read_bytes()}
    if getattr(result, "samples", None):  # grpo: what was sampled and what each reward gave it
        tracking.log_table(result.samples, "grpo_completions.json")
    if result.resumed_from_step:  # say so where users look: the MLflow run and the step's metadata
        tracking.log_metrics({"train_resumed_from_step": result.resumed_from_step})
    log_metadata(metadata={**metrics, **process_metadata()})
    return CheckpointDir(adapter_dir, temporary=True), Report(metrics, views)
