from typing import Annotated, Tuple

from datasets import Dataset
from zenml import log_metadata, step

from llm_engineering import tracking
from llm_engineering.artifacts import first_rows, CheckpointDir, Report, scratch_output
from llm_engineering.config import MergeConfig
from llm_engineering.merge.merge_adapter import merge_adapter as merge
from llm_engineering.model.loading import BaseModelRef
from llm_engineering.orchestration.caching import LIBRARY_AWARE
from llm_engineering.orchestration.process import prepare_process
from llm_engineering.views import merge_views

prepare_process()  # this process runs a step: noise filters, MLflow system metrics, materializers


@step(experiment_tracker=True, cache_policy=LIBRARY_AWARE)
def merge_adapter(
    base_model: BaseModelRef, trained_adapter: CheckpointDir, eval_dataset: Dataset, merge_config: MergeConfig
) -> Tuple[Annotated[CheckpointDir, "merged_model"], Annotated[Report, "merge_report"]]:
    """merge_and_unload into full-precision weights; fails before export if merged logits drift from the adapter's."""
    with scratch_output("merged-model-") as out:
        prompts = first_rows(eval_dataset, merge_config.fidelity_prompts)
        report = merge(base_model.config, merge_config, trained_adapter.path, prompts, out)
    tracking.log_metrics(report.metrics())
    tracking.log_dict(report.__dict__, "merge_fidelity.json")
    log_metadata(metadata=report.metrics())
    views = merge_views(report.__dict__, merge_config.max_logit_diff)
    return CheckpointDir(out, temporary=True), Report(report.__dict__, views)
