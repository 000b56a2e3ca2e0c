from typing import Annotated, Any, Optional

from datasets import Dataset
from zenml import log_metadata, step

from llm_engineering.artifacts import CheckpointDir, Report
from llm_engineering.config import EvalConfig
from llm_engineering.evaluation import evaluate_checkpoint
from llm_engineering.model.loading import BaseModelRef
from llm_engineering.orchestration.caching import LIBRARY_AWARE
from llm_engineering.orchestration.process import prepare_process
from llm_engineering.views import evaluation_views

prepare_process()  # this process runs a step: noise filters, MLflow system metrics, materializers


@step(experiment_tracker=True, cache_policy=LIBRARY_AWARE)  # tracked: the MLflow run spans every step
def evaluate_model(
    base_model: BaseModelRef,
    evaluation: EvalConfig,
    task_metric: str,
    dtype: str,
    max_length: int,
    files_digest: str,
    eval_dataset: Optional[Dataset] = None,
    data_summary: Optional[dict[str, Any]] = None,
    merged_model: Optional[CheckpointDir] = None,
    role: Optional[str] = None,
    reference: Optional[dict[str, Any]] = None,
) -> Annotated[Report, "evaluation"]:
    """Score the base model (no `merged_model`; cached while the base, the eval rows and the settings stay) or the
    merged fine-tune on the eval rows (`eval_dataset`, or `evaluation.eval_file`) and the regression probes.
    `data_summary`: only while `task_metric` is auto (its format names the metric). `files_digest`: the content of
    the evaluation's own files, for the cache key. `role` "start": the merged adapter a preference run started from.
    `reference`: the base model's evaluation, whose answers to the general prompts a fine-tune is scored on."""
    if task_metric == "auto":  # the format was known only once the rows were read
        task_metric = evaluation.metric_for(data_summary["format"])
    result = evaluate_checkpoint(base_model.config, merged_model.path if merged_model else None, eval_dataset,
                                 evaluation, task_metric, dtype, max_length, role,
                                 reference.get("general") if reference else None)
    log_metadata(metadata=result.metrics)
    evaluation_dict = result.as_dict()
    return Report(evaluation_dict, evaluation_views(evaluation_dict))
