"""ZenML materializers: checkpoint directories (adapters, merged models) and reports (step summaries with views).

Files are stored as they are: safetensors do not compress, so a tarball (ZenML's Path materializer) would only cost
time. On a local artifact store loading hands back the stored directory itself (read-only use), so a 270 MB merged
model is not copied again for every reader; on a remote store it is downloaded once into a temporary directory that
ZenML removes when the step ends (each reading step of a cloud run used to leave a copy of the model in /tmp).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, ClassVar, Dict, Tuple, Type

from datasets import Dataset
from zenml.enums import ArtifactType, VisualizationType
from zenml.integrations.huggingface.materializers.huggingface_datasets_materializer import HFDatasetMaterializer
from zenml.io import fileio
from zenml.materializers.base_materializer import BaseMaterializer

from llm_engineering.artifacts import CheckpointDir, Report


class CheckpointDirMaterializer(BaseMaterializer):
    ASSOCIATED_TYPES: ClassVar[Tuple[Type[Any], ...]] = (CheckpointDir,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.MODEL

    def load(self, data_type: Type[Any]) -> CheckpointDir:
        if os.path.isdir(self.uri):
            return CheckpointDir(path=Path(self.uri))
        with self.get_temporary_directory(delete_at_exit=False, delete_after_step_execution=True) as scratch:
            local = Path(scratch)
        for name in fileio.listdir(self.uri):
            fileio.copy(os.path.join(self.uri, str(name)), str(local / str(name)), overwrite=True)
        return CheckpointDir(path=local, temporary=True)

    def save(self, data: CheckpointDir) -> None:
        fileio.makedirs(self.uri)
        for file in data.files():
            target = os.path.join(self.uri, file.name)
            if data.temporary and os.path.isdir(self.uri):
                shutil.move(str(file), target)  # same machine: a rename, not a copy
            else:
                fileio.copy(str(file), target, overwrite=True)
        if data.temporary:
            shutil.rmtree(data.path, ignore_errors=True)

    def extract_metadata(self, data: CheckpointDir) -> dict[str, Any]:
        # Runs after save(), which may have moved a temporary directory away: measure what was stored.
        names = [str(n) for n in fileio.listdir(self.uri)]
        size = sum(fileio.size(os.path.join(self.uri, n)) or 0 for n in names)
        return {"files": len(names), "size_mib": round(size / 2**20, 2)}


class DatasetMaterializer(HFDatasetMaterializer):
    """ZenML's Hugging Face dataset materializer (Arrow files through `save_to_disk`) with metadata read from the
    Arrow table's schema and row count. ZenML's own converts the whole dataset to pandas for its metadata: 11.4 GiB
    of memory for a 1M-row chat dataset (bench/million_rows_pipeline.py), growing with the rows."""

    ASSOCIATED_TYPES: ClassVar[Tuple[Type[Any], ...]] = (Dataset,)

    def extract_metadata(self, data: Dataset) -> dict[str, Any]:
        return {"rows": data.num_rows, "columns": list(data.column_names)}



VIEW_TYPES = {".png": VisualizationType.IMAGE, ".html": VisualizationType.HTML, ".md": VisualizationType.MARKDOWN}


class ReportMaterializer(BaseMaterializer):
    """A report as JSON (what downstream steps load) plus its views as files ZenML's dashboard shows."""

    ASSOCIATED_TYPES: ClassVar[Tuple[Type[Any], ...]] = (Report,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.DATA_ANALYSIS

    def load(self, data_type: Type[Any]) -> Report:
        with fileio.open(os.path.join(self.uri, "report.json"), "r") as file:
            return Report(json.load(file))

    def save(self, data: Report) -> None:
        fileio.makedirs(self.uri)
        with fileio.open(os.path.join(self.uri, "report.json"), "w") as file:
            json.dump(dict(data), file, default=_json_scalar)

    def save_visualizations(self, data: Report) -> Dict[str, VisualizationType]:
        saved = {}
        for name, content in getattr(data, "views", {}).items():
            uri = os.path.join(self.uri, name)
            with fileio.open(uri, "wb" if isinstance(content, bytes) else "w") as file:
                file.write(content)
            saved[uri] = VIEW_TYPES[Path(name).suffix]
        return saved


def _json_scalar(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy and torch scalars
        return value.item()
    raise TypeError(f"{type(value).__name__} in a report is not JSON: {value!r}")
