import tempfile
from pathlib import Path
from typing import Annotated, Any, Tuple

from datasets import Dataset
from zenml import log_metadata, step

import llm_engineering.orchestration  # noqa: F401  (registers materializers)
from llm_engineering.orchestration.caching import LIBRARY_AWARE
from llm_engineering import tracking
from llm_engineering.orchestration.model_control_plane import process_metadata
from llm_engineering.config import DataConfig, TokenizerConfig
from llm_engineering.data.prepare import prepare
from llm_engineering.data.stats import histogram
from llm_engineering.model.loading import load_tokenizer


@step(experiment_tracker=True, cache_policy=LIBRARY_AWARE)
def load_dataset(data: DataConfig, tokenizer: TokenizerConfig, max_length: int, inputs_digest: str = "") -> Tuple[
    Annotated[Dataset, "train_dataset"],
    Annotated[Dataset, "eval_dataset"],
    Annotated[dict[str, Any], "data_summary"],
]:
    """Read, validate, template, tokenize and split every row before any model loads (the tokenizer only).
    `inputs_digest` (the content of the local files read) is here for the cache key: an edited file reruns."""
    prepared = prepare(data, load_tokenizer(tokenizer), max_length)
    summary = prepared.report.metadata()
    log_metadata(metadata={**summary, "sources": prepared.report.sources, **process_metadata()})
    tracking.log_dataset(prepared.train, name="train", digest=summary["fingerprint"], context="training")
    tracking.log_metrics({f"data_{k}": v for k, v in summary.items()})
    tracking.log_dict({**summary, "sources": prepared.report.sources}, "data/summary.json")
    with tempfile.TemporaryDirectory() as scratch:
        tracking.log_artifact(histogram(prepared.train_lengths, max_length, Path(scratch) / "token_lengths.png"), "data")
    return prepared.train, prepared.eval, summary
