"""Where the SFT step keeps its resumable checkpoints: a directory named after everything that determines the training
(base weights, initial adapter, data, settings), under the local artifact store or `train.checkpoint_dir`.

Rerunning the same pipeline/config after a kill finds the same directory and resumes; any change in the inputs gives a
new directory, so a checkpoint is never resumed into a different training.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Optional

from zenml.client import Client

logger = logging.getLogger(__name__)


def training_key(*parts: object, files: tuple[Path, ...] = ()) -> str:
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    for file in files:
        digest.update(file.read_bytes())
    return digest.hexdigest()[:24]


def durable_checkpoint_dir(key: str, configured_root: Optional[str]) -> Optional[Path]:
    if configured_root:
        return Path(configured_root).expanduser() / key
    store = Client().active_stack.artifact_store.path
    if os.path.isdir(store):
        return Path(store) / "sft-checkpoints" / key
    logger.warning("The artifact store %s is not a local path: set train.checkpoint_dir to a durable mounted "
                   "directory to make training resumable after preemption", store)
    return None
