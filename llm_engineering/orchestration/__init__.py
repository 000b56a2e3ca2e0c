"""The ZenML extension of the library, and the only package in it that imports zenml.

Importing it quiets other libraries' noise (console.py), turns on MLflow's system metrics (unless the environment
says otherwise) and registers our materializers and ZenML's Hugging Face ones (without that import a
`datasets.Dataset` output would fall back to ZenML's pickle materializer).
"""

import os

from llm_engineering.console import quiet_foreign_noise

quiet_foreign_noise()  # before the imports below bring in transformers, datasets and mlflow

# CPU, memory (and GPU where there is one) every 10 s in each step's MLflow run: users see what a step used.
os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "true")

import zenml.integrations.huggingface.materializers  # noqa: F401  (registers the datasets/transformers materializers)

from llm_engineering.orchestration.materializers import CheckpointDirMaterializer, ReportMaterializer  # noqa: F401
