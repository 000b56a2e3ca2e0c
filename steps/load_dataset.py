from typing import Annotated, Any, Tuple

from datasets import Dataset
from zenml import log_metadata, step

import llm_engineering.orchestration  # noqa: F401  (registers materializers)
from llm_engineering.config import DataConfig
from llm_engineering.data.sources import load_split


@step
def load_dataset(data: DataConfig) -> Tuple[
    Annotated[Dataset, "train_dataset"],
    Annotated[Dataset, "eval_dataset"],
    Annotated[dict[str, Any], "data_summary"],
]:
    """Load, validate and split the rows (all of them are checked before any model loads)."""
    split = load_split(data)
    summary = {
        "source": data.source,
        "location": data.path or data.hub_id or "synthetic booking task",
        "fingerprint": split.fingerprint,
        "train_rows": len(split.train),
        "eval_rows": len(split.eval),
    }
    log_metadata(metadata=summary)
    return Dataset.from_list(split.train), Dataset.from_list(split.eval), summary
