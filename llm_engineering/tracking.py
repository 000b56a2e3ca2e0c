"""Tracking helpers. They log into whatever MLflow run is active (ZenML's MLflow experiment tracker opens one per
pipeline run) and into the running Comet experiment (ZenML's Comet tracker opens one per step), and do nothing when
neither is, so the library runs the same with or without tracking. Lineage (dataset inputs, logged and registered
models) exists only in MLflow.
"""

from __future__ import annotations

import json
import logging
import math
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Optional

logger = logging.getLogger(__name__)

MAX_PARAM_LENGTH = 6000
SERVING_REQUIREMENTS = ("torch", "transformers", "accelerate", "safetensors")


def active_run_id() -> Optional[str]:
    try:
        import mlflow
    except ImportError:
        return None
    run = mlflow.active_run()
    return run.info.run_id if run else None


def active_run_target() -> Optional[tuple[str, str]]:
    """(run id, tracking URI) of the active MLflow run, for processes that log into it from outside."""
    run_id = active_run_id()
    if not run_id:
        return None
    import mlflow

    return run_id, mlflow.get_tracking_uri()


def comet_experiment():
    """The running Comet experiment, if comet_ml is installed and one is open."""
    try:
        import comet_ml
    except ImportError:
        return None
    experiment = comet_ml.get_running_experiment()
    return experiment if experiment is not None and experiment.alive else None


def log_params(params: dict[str, Any]) -> None:
    params = {k: str(v)[:MAX_PARAM_LENGTH] for k, v in params.items()}
    if active_run_id():
        import mlflow

        mlflow.log_params(params)
    if comet := comet_experiment():
        comet.log_parameters(params)


def log_metrics(metrics: dict[str, float], step: Optional[int] = None) -> None:
    finite = {k: float(v) for k, v in metrics.items() if _is_metric(v)}
    if active_run_id():
        import mlflow

        mlflow.log_metrics(finite, step=step)
    if comet := comet_experiment():
        comet.log_metrics(finite, step=step)


def _is_metric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def set_tags(tags: dict[str, str]) -> None:
    if active_run_id():
        import mlflow

        mlflow.set_tags(tags)
    if comet := comet_experiment():
        comet.log_others(tags)


def set_description(text: str) -> None:
    """The MLflow run's Description field (markdown, shown at the top of the run page)."""
    if active_run_id():
        import mlflow

        mlflow.set_tag("mlflow.note.content", text)


def log_dict(data: Any, artifact_file: str) -> None:
    if active_run_id():
        import mlflow

        mlflow.log_dict(data, artifact_file)
    if comet := comet_experiment():
        comet.log_asset_data(json.dumps(data, indent=2, default=str), name=artifact_file)


def log_text(text: str, artifact_file: str) -> None:
    if active_run_id():
        import mlflow

        mlflow.log_text(text, artifact_file)
    if comet := comet_experiment():
        comet.log_asset_data(text, name=artifact_file)


def log_artifact(path, artifact_path: Optional[str] = None) -> None:
    if active_run_id():
        import mlflow

        mlflow.log_artifact(str(path), artifact_path)
    if comet := comet_experiment():
        name = Path(path).name
        comet.log_asset(str(path), file_name=f"{artifact_path}/{name}" if artifact_path else name)


def log_table(rows: list[dict], artifact_file: str) -> None:
    if not rows:
        return
    if active_run_id():
        import mlflow

        mlflow.log_table({key: [row[key] for row in rows] for key in rows[0]}, artifact_file)
    if comet := comet_experiment():
        comet.log_asset_data(json.dumps(rows, indent=2), name=artifact_file)


def mlflow_metrics_callback(run_id: Optional[str] = None, tracking_uri: Optional[str] = None):
    """A TrainerCallback streaming train/eval loss, learning rate and grad norm to MLflow as they happen (instead of
    transformers' MLflowCallback, which also logs ~150 TrainingArguments as params).

    By default it logs into the active run (and Comet); with `run_id` it logs into that run from a process that has
    no active run, a data-parallel training process, without touching the run's status."""
    from transformers import TrainerCallback

    if run_id:
        import mlflow
        from mlflow.entities import Metric

        client = mlflow.MlflowClient(tracking_uri=tracking_uri)

        def sink(metrics, step):
            at = int(time.time() * 1000)
            finite = {k: float(v) for k, v in metrics.items() if _is_metric(v)}
            client.log_batch(run_id, metrics=[Metric(k, v, at, step) for k, v in finite.items()])
    else:
        sink = log_metrics

    class MlflowMetrics(TrainerCallback):
        last = None  # (time, tokens seen) at the previous training log, or at the start

        def on_train_begin(self, args, state, control, **kwargs):
            self.last = (time.perf_counter(), state.num_input_tokens_seen)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                logs = dict(logs)
                if "loss" in logs and "train_loss" not in logs:  # throughput since the last log (transformers':
                    now, seen = time.perf_counter(), state.num_input_tokens_seen  # since the start)
                    if self.last and seen > self.last[1]:
                        logs["step_tokens_per_second"] = (seen - self.last[1]) / (now - self.last[0])
                    self.last = (now, seen)
                sink(training_log_metrics(logs), state.global_step)

    return MlflowMetrics()


def training_log_metrics(logs: dict[str, Any]) -> dict[str, Any]:
    """A Trainer log entry under our metric names: train_* / eval_*; the end-of-training summary's `train_loss` (the
    mean over all steps) becomes `train_loss_mean`."""
    logs = dict(logs)
    if "train_loss" in logs:
        logs["train_loss_mean"] = logs.pop("train_loss")
    return {("train_" + k if not k.startswith(("eval_", "train_")) else k): v for k, v in logs.items()}


def replay_to_comet(log_history: list[dict]) -> None:
    """Log a finished training's history into the running Comet experiment (ranks of a data-parallel run stream to
    MLflow only)."""
    if comet := comet_experiment():
        for entry in log_history:
            comet.log_metrics({k: v for k, v in training_log_metrics(entry).items() if _is_metric(v)},
                              step=entry.get("step"))


def log_and_register_model(model, tokenizer, registered_model_name: Optional[str],
                           max_tokens: int = 256) -> Optional[dict[str, Any]]:
    """Log the exported model as an MLflow transformers model with MLflow's OpenAI-style chat signature
    (`llm/v1/chat`: `mlflow models serve` answers `{"messages": [...]}` with a `chat.completion`, through the
    exported chat template, stopping at its end tokens) and register it. `max_tokens`: the default for requests
    that do not set it (transformers' own default is 20 tokens in all).

    The in-memory components are passed, not the directory: MLflow 3.17's local-checkpoint path breaks on
    transformers 5's pipeline registry."""
    if not active_run_id():
        return None
    import mlflow

    model_info = mlflow.transformers.log_model(
        transformers_model={"model": model, "tokenizer": tokenizer},
        name="model",
        task="llm/v1/chat",
        model_config={"max_new_tokens": max_tokens},
        registered_model_name=registered_model_name,
        pip_requirements=_pinned(SERVING_REQUIREMENTS),
    )
    result = {"model_uri": model_info.model_uri}
    if registered_model_name:
        result.update(registered_model_name=registered_model_name, version=str(model_info.registered_model_version))
    return result


ADAPTER_MODEL_NAME = "lora_adapter"  # what a preference run's start adapter is found by, in a version's run


def log_adapter_model_unless_logged(adapter_dir, params: dict[str, Any]) -> Optional[str]:
    """The adapter as the run's logged model if the run has none: a run whose training step came from ZenML's cache
    (the run that trained it logged it, maybe in another MLflow store: ZenML's cache spans repositories) registers a
    version a preference run must still be able to start from."""
    run_id = active_run_id()
    if not run_id:
        return None
    import mlflow

    client = mlflow.MlflowClient()
    experiment = client.get_run(run_id).info.experiment_id
    if client.search_logged_models([experiment], filter_string=(
            f"source_run_id = '{run_id}' AND name = '{ADAPTER_MODEL_NAME}'")):
        return None
    return log_adapter_model(adapter_dir, params)


def log_adapter_model(adapter_dir, params: dict[str, Any]) -> Optional[str]:
    """The trained LoRA adapter as an MLflow logged model of the run (its files and LoRA settings), so the run's
    Models tab shows the adapter beside the merged model it became. Returns the model id."""
    run_id = active_run_id()
    if not run_id:
        return None
    import mlflow

    model = mlflow.initialize_logged_model(name=ADAPTER_MODEL_NAME, source_run_id=run_id,
                                           model_type="peft-lora-adapter",
                                           params={k: str(v)[:MAX_PARAM_LENGTH] for k, v in params.items()})
    try:
        mlflow.MlflowClient().log_model_artifacts(model.model_id, str(adapter_dir))
    except BaseException:
        mlflow.finalize_logged_model(model.model_id, "FAILED")
        raise
    mlflow.finalize_logged_model(model.model_id, "READY")
    return model.model_id


def _pinned(packages) -> list[str]:
    pins = []
    for name in packages:
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            pins.append(name)
    return pins


def log_dataset(dataset, name: str, digest: str, context: str) -> None:
    """The training rows as an MLflow dataset input of the run (lineage: which data, by content fingerprint)."""
    if not active_run_id():
        return
    import mlflow

    # from the Arrow dataset itself (schema and row count, no pandas copy of a million rows)
    mlflow.log_input(mlflow.data.from_huggingface(dataset, name=name, digest=digest[:32]), context=context)
