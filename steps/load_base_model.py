from typing import Annotated

from zenml import log_metadata, step

from llm_engineering.orchestration.caching import LIBRARY_AWARE
from llm_engineering.config import ModelConfig
from llm_engineering.model.loading import BaseModelRef, load_base
from llm_engineering.orchestration.process import prepare_process

prepare_process()  # this process runs a step: noise filters, MLflow system metrics, materializers


@step(experiment_tracker=True, cache_policy=LIBRARY_AWARE)  # tracked: the MLflow run spans every step
def load_base_model(model: ModelConfig, checkpoint_digest: str = "") -> Annotated[BaseModelRef, "base_model"]:
    """Load the base model as configured (quantized or not) and hand on a reference, not the weights.
    `checkpoint_digest` (a local checkpoint's files) is here for the cache key: changed weights reload."""
    _, _, ref = load_base(model)
    log_metadata(metadata={
        "model": ref.display_name,
        "parameters": ref.num_parameters,
        "dtype": model.dtype,
        "quantization": model.quantization.model_dump(),
        "memory_footprint_mib": round(ref.footprint_bytes / 2**20, 2),
        "unquantized_footprint_mib": round(ref.unquantized_bytes / 2**20, 2),
        "load_seconds": ref.load_seconds,
        "weights_sha256": ref.weights_sha256 or "",
    })
    return ref
