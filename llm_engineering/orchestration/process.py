"""What a process that runs a pipeline or a step sets up first, once, by an explicit call (importing the package
changes nothing):

- other libraries' warnings and log lines that say nothing to a user are filtered (llm_engineering/console.py);
- MLflow samples CPU, memory (and GPU) every 10 s in each step's run, unless the environment says otherwise;
- our materializers are ZenML's choice for their types, ours over ZenML's own for `datasets.Dataset` (without it a
  dataset output would be converted to pandas for its metadata: 11 GiB at 1M rows);
- a failed run ends with our failure block (console_hooks.short_failures).
"""

from __future__ import annotations

import os

_prepared = False


def prepare_process() -> None:
    global _prepared
    if _prepared:
        return
    from llm_engineering.console import quiet_foreign_noise

    quiet_foreign_noise()
    os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "true")

    import zenml.integrations.huggingface.materializers  # noqa: F401  (ZenML's datasets/transformers materializers)
    from datasets import Dataset
    from zenml.materializers.materializer_registry import materializer_registry

    from llm_engineering.orchestration.console_hooks import short_failures
    from llm_engineering.orchestration.materializers import DatasetMaterializer

    # ZenML keeps the first materializer registered for a type, and its Hugging Face ones are imported first.
    materializer_registry.register_and_overwrite_type(Dataset, DatasetMaterializer)
    short_failures()
    _prepared = True
