"""The ZenML extension of the library, and the only package in it that imports zenml.

Importing it registers our materializers and ZenML's Hugging Face ones (without that import a `datasets.Dataset`
output would fall back to ZenML's pickle materializer).
"""

import zenml.integrations.huggingface.materializers  # noqa: F401  (registers the datasets/transformers materializers)

from llm_engineering.orchestration.materializers import CheckpointDirMaterializer  # noqa: F401
