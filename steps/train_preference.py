import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Tuple

from datasets import Dataset
from zenml import log_metadata, step

import llm_engineering.orchestration  # noqa: F401  (registers materializers)
from llm_engineering import tracking
from llm_engineering.artifacts import CheckpointDir, Report, scratch_output
from llm_engineering.config import AdapterConfig, PreferenceConfig, TrainConfig, flatten
from llm_engineering.model.curves import loss_curve
from llm_engineering.model.loading import BaseModelRef
from llm_engineering.model import preference_training
from llm_engineering.orchestration.caching import LIBRARY_AWARE
from llm_engineering.orchestration.checkpoints import checkpoint_location, training_key
from llm_engineering.orchestration.model_control_plane import process_metadata


@step(experiment_tracker=True, cache_policy=LIBRARY_AWARE)
def train_preference(
    base_model: BaseModelRef,
    initial_adapter: CheckpointDir,
    train_dataset: Dataset,
    eval_dataset: Dataset,
    data_summary: dict,
    adapter: AdapterConfig,
    train: TrainConfig,
    preference: PreferenceConfig,
) -> Tuple[Annotated[CheckpointDir, "trained_adapter"], Annotated[Report, "training_metrics"]]:
    """DPO or ORPO of the adapter on the preference pairs; loss and reward curves stream to MLflow."""
    location = nullcontext(None)
    if train.checkpoint_steps:
        key = training_key(base_model.config, base_model.weights_sha256, adapter, train, preference,
                           data_summary["fingerprint"], files=(initial_adapter.path / "adapter_model.safetensors",))
        location = checkpoint_location(key, train.checkpoint_dir)  # mirrored to a remote artifact store
    with scratch_output("tuned-adapter-") as out, location as checkpoints:
        result = preference_training.train_preference(
            base_model.config, adapter, train, preference, initial_adapter.path, train_dataset, eval_dataset, out,
            callbacks=[tracking.mlflow_metrics_callback()], checkpoint_dir=checkpoints,
        )
    metrics = result.metrics()
    tracking.log_adapter_model(out, {**flatten(adapter, prefix="adapter."), **flatten(preference, "preference.")})
    with tempfile.TemporaryDirectory() as plots:
        picture = loss_curve(result.log_history, Path(plots) / "loss_curve.png")
        tracking.log_artifact(picture, "training")
        views = {"loss_curve.png": picture.read_bytes()}
    if result.resumed_from_step:
        tracking.log_metrics({"train_resumed_from_step": result.resumed_from_step})
    log_metadata(metadata={**metrics, **process_metadata()})
    return CheckpointDir(out, temporary=True), Report(metrics, views)
