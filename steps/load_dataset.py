import tempfile
from pathlib import Path
from typing import Annotated, Tuple

from datasets import Dataset
from zenml import log_metadata, step

from llm_engineering.orchestration.caching import LIBRARY_AWARE
from llm_engineering import tracking
from llm_engineering.orchestration.model_control_plane import process_metadata
from llm_engineering.artifacts import Report
from llm_engineering.config import DataConfig, TokenizerConfig
from llm_engineering.data.prepare import prepare
from llm_engineering.data.row_kinds import row_kind
from llm_engineering.data.stats import histogram
from llm_engineering.model.loading import load_tokenizer
from llm_engineering.orchestration.process import prepare_process
from llm_engineering.views import data_views

prepare_process()  # this process runs a step: noise filters, MLflow system metrics, materializers


@step(experiment_tracker=True, cache_policy=LIBRARY_AWARE)
def load_dataset(data: DataConfig, tokenizer: TokenizerConfig, max_length: int, inputs_digest: str = "",
                 rows: str = "finetune") -> Tuple[
    Annotated[Dataset, "train_dataset"],
    Annotated[Dataset, "eval_dataset"],
    Annotated[Report, "data_summary"],
]:
    """Read, validate, template, tokenize and split every row before any model loads (the tokenizer only).
    `inputs_digest` (the content of the local files read) is here for the cache key: an edited file reruns.
    `rows`: "finetune" (SFT rows) or "preference" (prompt/chosen/rejected pairs)."""
    prepared = prepare(data, load_tokenizer(tokenizer), max_length, row_kind(rows))
    summary = prepared.report.metadata()
    log_metadata(metadata={**summary, "sources": prepared.report.sources, **process_metadata()})
    tracking.log_dataset(prepared.train, name="train", digest=summary["fingerprint"], context="training")
    tracking.log_metrics({f"data_{k}": v for k, v in summary.items()})
    tracking.log_dict({**summary, "sources": prepared.report.sources}, "data/summary.json")
    with tempfile.TemporaryDirectory() as scratch:
        picture = histogram(prepared.train_lengths, max_length, Path(scratch) / "token_lengths.png")
        tracking.log_artifact(picture, "data")
        views = data_views(summary, prepared.report.sources, picture.read_bytes())
    return prepared.train, prepared.eval, Report(summary, views)
