"""ZenML materializer for checkpoint directories (adapters, merged models).

Files are stored as they are: safetensors do not compress, so a tarball (ZenML's Path materializer) would only cost
time. On a local artifact store loading hands back the stored directory itself (read-only use), so a 270 MB merged
model is not copied again for every reader; on a remote store it is downloaded once into a temporary directory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, ClassVar, Tuple, Type

from zenml.enums import ArtifactType
from zenml.io import fileio
from zenml.materializers.base_materializer import BaseMaterializer

from llm_engineering.artifacts import CheckpointDir


class CheckpointDirMaterializer(BaseMaterializer):
    ASSOCIATED_TYPES: ClassVar[Tuple[Type[Any], ...]] = (CheckpointDir,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.MODEL

    def load(self, data_type: Type[Any]) -> CheckpointDir:
        if os.path.isdir(self.uri):
            return CheckpointDir(path=Path(self.uri))
        local = Path(tempfile.mkdtemp(prefix="checkpoint-"))
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
