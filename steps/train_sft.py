from typing import Annotated, Tuple

from datasets import Dataset
from zenml import step

from llm_engineering import tracking
from llm_engineering.artifacts import CheckpointDir, Report, scratch_output
from llm_engineering.config import AdapterConfig, TrainConfig, adapter_model_params
from llm_engineering.model.loading import BaseModelRef
from llm_engineering.orchestration.caching import LIBRARY_AWARE
from llm_engineering.orchestration.process import prepare_process
from llm_engineering.orchestration.training_step import training_checkpoints, training_outputs
from llm_engineering.training import data_parallel

prepare_process()  # this process runs a step: noise filters, MLflow system metrics, materializers


@step(experiment_tracker=True, cache_policy=LIBRARY_AWARE)
def train_sft(
    base_model: BaseModelRef,
    initial_adapter: CheckpointDir,
    train_dataset: Dataset,
    eval_dataset: Dataset,
    data_summary: dict,
    adapter: AdapterConfig,
    train: TrainConfig,
) -> Tuple[Annotated[CheckpointDir, "trained_adapter"], Annotated[Report, "training_metrics"]]:
    """TRL SFT of the adapter; loss curves stream to MLflow, the trained adapter is the output."""
    location = training_checkpoints(train, base_model, initial_adapter, data_summary, (adapter, train))
    with scratch_output("trained-adapter-") as out, location as checkpoints:
        result = data_parallel.train(  # in this process, or on train.num_processes torchrun ranks
            base_model.config, adapter, train, initial_adapter.path,
            train_dataset, eval_dataset, out,  # token columns are taken as they are, not copied to Python lists
            callbacks=[tracking.mlflow_metrics_callback()], checkpoint_dir=checkpoints,
            mlflow_run=tracking.active_run_target(),
        )
    trained, report = training_outputs(result, out, adapter_model_params(adapter))
    return trained, report  # a literal tuple: ZenML reads two outputs from the return statement
