from typing import Annotated, Tuple

from datasets import Dataset
from zenml import step

from llm_engineering import tracking
from llm_engineering.artifacts import CheckpointDir, Report, scratch_output
from llm_engineering.config import AdapterConfig, PreferenceConfig, TrainConfig, adapter_model_params
from llm_engineering.model.loading import BaseModelRef
from llm_engineering.orchestration.caching import LIBRARY_AWARE
from llm_engineering.orchestration.process import prepare_process
from llm_engineering.orchestration.training_step import training_checkpoints, training_outputs
from llm_engineering.training.preference import train_preference as tune_on_pairs  # this step has its name

prepare_process()  # this process runs a step: noise filters, MLflow system metrics, materializers


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
    """DPO, ORPO or GRPO of the adapter on the preference pairs; loss and reward curves stream to MLflow."""
    location = training_checkpoints(train, base_model, initial_adapter, data_summary, (adapter, train, preference))
    with scratch_output("tuned-adapter-") as out, location as checkpoints:
        result = tune_on_pairs(
            base_model.config, adapter, train, preference, initial_adapter.path, train_dataset, eval_dataset, out,
            callbacks=[tracking.mlflow_metrics_callback()], checkpoint_dir=checkpoints,
        )
    trained, report = training_outputs(result, out, adapter_model_params(adapter, preference))
    return trained, report  # a literal tuple: ZenML reads two outputs from the return statement
