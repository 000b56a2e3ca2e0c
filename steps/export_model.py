from typing import Annotated, Any, Optional, Tuple

from datasets import Dataset
from zenml import log_metadata, step

from llm_engineering import tracking
from llm_engineering.artifacts import CheckpointDir, Report
from llm_engineering.config import ExportConfig
from llm_engineering.model.loading import BaseModelRef
from llm_engineering.orchestration.model_control_plane import (
    pipeline_run_tags, record_on_model_version, step_wall_seconds, zenml_model_name,
)
from llm_engineering.orchestration.process import prepare_process
from llm_engineering.release import release
from llm_engineering.views import export_views

prepare_process()  # this process runs a step: noise filters, MLflow system metrics, materializers


@step(experiment_tracker=True, enable_cache=False)
def export_model(
    merged_model: CheckpointDir,
    trained_adapter: CheckpointDir,
    base_model: BaseModelRef,
    eval_dataset: Dataset,
    data_summary: dict[str, Any],
    training_metrics: dict[str, float],
    merge_report: dict[str, Any],
    base_evaluation: dict[str, Any],
    finetuned_evaluation: dict[str, Any],
    export: ExportConfig,
    run_config: dict[str, Any],
    start_evaluation: Optional[dict[str, Any]] = None,
    method: str = "sft",
) -> Tuple[Annotated[str, "export_dir"], Annotated[Report, "evaluation_metrics"]]:
    """Gate, write, verify, track and register the model (llm_engineering/release.py), then record the outcome on the
    run's ZenML model version (stage production for a new champion). `start_evaluation`: a preference run's starting
    model, shown beside the base and the tuned one; `method`: how the adapter was trained, for the model card."""
    tracking.set_tags(pipeline_run_tags())
    done = release(merged_model.path, trained_adapter.path, base_model.display_name, eval_dataset, data_summary,
                   training_metrics, merge_report, base_evaluation, finetuned_evaluation, export, run_config,
                   start_evaluation, method, registry_default=zenml_model_name(), step_seconds=step_wall_seconds())
    log_metadata(metadata=done.summary)
    stage = record_on_model_version(done.summary, done.decision.promoted if done.decision else None)
    if stage:
        done.summary["zenml_model_stage"] = stage
    return str(done.out), Report(done.summary, export_views(done.card, done.samples, done.summary))
