"""The datasets materializer the steps' Dataset outputs go through: Arrow files stored, the same rows loaded, and
metadata from the schema instead of ZenML's pandas copy of every row (11.4 GiB at 1M chat rows)."""

import pandas as pd
import pytest
from datasets import Dataset
from zenml.integrations.huggingface.materializers.huggingface_datasets_materializer import HFDatasetMaterializer
from zenml.materializers.materializer_registry import materializer_registry

from llm_engineering.orchestration.materializers import DatasetMaterializer
from llm_engineering.orchestration.process import prepare_process

ROWS = {"input_ids": [[1, 2, 3], [4]], "text": ["line 1\u2028line 2", "é"]}


def test_dataset_outputs_are_stored_as_arrow_with_metadata_from_the_schema(tmp_path, monkeypatch):
    prepare_process()  # what a step's module calls
    assert materializer_registry[Dataset] is DatasetMaterializer
    dataset = Dataset.from_dict(ROWS)
    store = DatasetMaterializer(str(tmp_path / "dataset"))  # ZenML's fileio: a local path is a local store
    store.save(dataset)
    monkeypatch.setattr(Dataset, "to_pandas", lambda *args, **kwargs: pytest.fail("a pandas copy of every row"))
    assert store.extract_metadata(dataset) == {"rows": 2, "columns": ["input_ids", "text"]}
    assert list((tmp_path / "dataset").rglob("*.arrow"))
    assert store.load(Dataset).to_dict() == ROWS


def test_zenmls_own_dataset_metadata_still_copies_every_row_to_pandas(tmp_path, monkeypatch):
    """Why DatasetMaterializer exists. When this fails ZenML no longer does it, and the override can go."""
    copies = []

    def to_pandas(self, *args, **kwargs):
        copies.append(len(self))
        return pd.DataFrame({"n": [1]})

    monkeypatch.setattr(Dataset, "to_pandas", to_pandas)
    HFDatasetMaterializer(str(tmp_path / "zenml")).extract_metadata(Dataset.from_dict(ROWS))
    assert copies == [2]


IMPORT_CHANGES = """
import json, logging, os, sys, warnings
from datasets import Dataset
import zenml.integrations.huggingface.materializers
from zenml.materializers.materializer_registry import materializer_registry

def state():
    return [len(warnings.filters), len(logging.getLogger("mlflow.transformers").filters),
            materializer_registry[Dataset].__name__, os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"),
            getattr(sys.excepthook, "short_failures", False)]

before = state()
import llm_engineering.orchestration, llm_engineering.orchestration.materializers, llm_engineering.orchestration.stack
imported = state()
from llm_engineering.orchestration.process import prepare_process
prepare_process()
print(json.dumps([before, imported, state()]))
"""


def test_importing_the_orchestration_package_changes_nothing_until_a_process_asks():
    """A library import must not install filters or replace ZenML's choices; a pipeline's or a step's process asks."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"}
    done = subprocess.run([sys.executable, "-c", IMPORT_CHANGES], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    before, imported, prepared = json.loads(done.stdout.strip().splitlines()[-1])
    assert imported == before and before[2] == "HFDatasetMaterializer" and before[3] is None
    assert prepared[0] > before[0] and prepared[1] > before[1]  # other libraries' noise filtered
    assert prepared[2:] == ["DatasetMaterializer", "true", True]
