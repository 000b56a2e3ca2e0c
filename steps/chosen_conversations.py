from typing import Annotated

from datasets import Dataset
from zenml import step

from llm_engineering.config import TokenizerConfig
from llm_engineering.data.preference import chosen_conversations as conversations
from llm_engineering.model.loading import load_tokenizer
from llm_engineering.orchestration.caching import LIBRARY_AWARE
from llm_engineering.orchestration.process import prepare_process

prepare_process()  # this process runs a step: noise filters, MLflow system metrics, materializers


@step(experiment_tracker=True, cache_policy=LIBRARY_AWARE)
def chosen_conversations(pairs: Dataset, tokenizer: TokenizerConfig, max_length: int, truncate: bool) -> Annotated[
        Dataset, "eval_conversations"]:
    """The held-out pairs' chosen answers as SFT rows: what the merge check and the evaluations score."""
    return conversations(pairs, load_tokenizer(tokenizer), max_length, truncate)
