import tempfile
from pathlib import Path
from typing import Annotated, Any, Tuple

from datasets import Dataset
from zenml import log_metadata, step

import llm_engineering.orchestration  # noqa: F401  (registers materializers)
from llm_engineering import tracking
from llm_engineering.orchestration.model_control_plane import process_metadata
from llm_engineering.config import DataConfig, ModelConfig
from llm_engineering.data.prepare import prepare
from llm_engineering.data.stats import histogram
from llm_engineering.model.loading import load_tokenizer


@step(experiment_tracker=True)
def load_dataset(data: DataConfig, model: ModelConfig, max_length: int) -> Tuple[
    Annotated[Dataset, "train_dataset"],
    Annotated[Dataset, "eval_dataset"],
    Annotated[dict[str, Any], "data_summary"],
]:
    """Read, validate, template, tokenize and split every row before any model loads (the tokenizer only)."""
    prepared = prepare(data, load_tokenizer(model), max_length)
    summary = prepared.report.metadata()
    log_metadata(metadata={**summary, **process_metadata()})
    train = Dataset.from_list(prepared.train)
    tracking.log_dataset(train, name="train", digest=summary["fingerprint"], context="training")
    tracking.log_metrics({f"data_{k}": v for k, v in summary.items()})
    tracking.log_dict(summary, "data/summary.json")
    with tempfile.TemporaryDirectory() as scratch:
        lengths = [len(r["input_ids"]) for r in prepared.train]
        tracking.log_artifact(histogram(lengths, max_length, Path(scratch) / "token_lengths.png"), "data")
    return train, Dataset.from_list(prepared.eval), summary
