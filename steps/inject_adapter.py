from typing import Annotated

from zenml import log_metadata, step

from llm_engineering.orchestration.caching import LIBRARY_AWARE
from llm_engineering.artifacts import CheckpointDir, scratch_output
from llm_engineering.config import AdapterConfig
from llm_engineering.model.adapter import check_init_supported, inject_adapter as inject, save_adapter
from llm_engineering.model.loading import BaseModelRef, checkpoint_location, load_model
from llm_engineering.orchestration.process import prepare_process

prepare_process()  # this process runs a step: noise filters, MLflow system metrics, materializers


@step(experiment_tracker=True, cache_policy=LIBRARY_AWARE)  # tracked: the MLflow run spans every step
def inject_adapter(base_model: BaseModelRef, adapter: AdapterConfig) -> Annotated[CheckpointDir, "initial_adapter"]:
    """Wrap the base in a LoRA adapter (targets checked against the real model) and save its initial weights."""
    check_init_supported(adapter)  # before loading anything
    peft_model, stats = inject(load_model(base_model.config), adapter, checkpoint_location(base_model.config))
    log_metadata(metadata={
        "trainable_parameters": stats.trainable_parameters,
        "total_parameters": stats.total_parameters,
        "trainable_percent": round(stats.trainable_percent, 4),
        "target_modules": stats.target_modules,
        "lora_modules": stats.lora_module_count,
    })
    with scratch_output("initial-adapter-") as out:
        save_adapter(peft_model, out)
    return CheckpointDir(out, temporary=True)
