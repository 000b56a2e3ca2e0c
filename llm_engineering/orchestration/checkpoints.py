"""Where the SFT step keeps its resumable checkpoints: a directory named after everything that determines the training
(base weights, initial adapter, data, settings), under `train.checkpoint_dir` or the active artifact store.

Rerunning the same pipeline/config after a kill finds the same directory and resumes; any change in the inputs gives a
new directory, so a checkpoint is never resumed into a different training. On a local artifact store the Trainer
writes there directly. On a remote one (S3, GCS, ...) it writes to a local scratch directory that a `CheckpointMirror`
copies to the store through ZenML's `fileio` as each checkpoint completes, manifest last; a rerun on any machine
downloads the newest complete one first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from zenml.client import Client
from zenml.io import fileio

logger = logging.getLogger(__name__)

MANIFEST = "checkpoint-manifest.json"  # written after every other file: a checkpoint without it is incomplete


def training_key(*parts: object, files: tuple[Path, ...] = ()) -> str:
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    for file in files:
        digest.update(file.read_bytes())
    return digest.hexdigest()[:24]


@contextmanager
def checkpoint_location(key: str, configured_root: Optional[str]) -> Iterator[Path]:
    """The local directory training checkpoints into (and resumes from) for this training key; on a remote artifact
    store, mirrored there while the block runs."""
    if configured_root:
        yield Path(configured_root).expanduser() / key
        return
    store = Client().active_stack.artifact_store.path
    if "://" not in store:  # the local artifact store: already durable on this machine
        yield Path(store) / "sft-checkpoints" / key
        return
    with tempfile.TemporaryDirectory(prefix="sft-checkpoints-") as scratch:
        mirror = CheckpointMirror(f"{store.rstrip('/')}/sft-checkpoints/{key}", Path(scratch) / key)
        mirror.restore()
        with mirror.running():
            yield mirror.local


def complete_local(directory: Path) -> list[Path]:
    """Checkpoints the Trainer has finished writing (its trainer_state.json, written last, parses), oldest first."""
    found = []
    for path in directory.glob("checkpoint-*") if directory.is_dir() else []:
        try:
            json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        found.append(path)
    return sorted(found, key=lambda p: int(p.name.rsplit("-", 1)[-1]))


class CheckpointMirror:
    """Copies each complete local checkpoint to `remote` (any ZenML fileio URI) and keeps only the newest there."""

    def __init__(self, remote: str, local: Path, interval_s: float = 0.5):
        self.remote, self.local, self.interval_s = remote, local, interval_s
        self.uploaded: set[str] = set()

    def remote_complete(self) -> list[str]:
        """Names of the remote checkpoints whose manifest exists, oldest first."""
        if not fileio.exists(self.remote):
            return []
        names = [str(n).rstrip("/").rsplit("/", 1)[-1] for n in fileio.listdir(self.remote)]
        done = [n for n in names if n.startswith("checkpoint-") and fileio.exists(f"{self.remote}/{n}/{MANIFEST}")]
        return sorted(done, key=lambda n: int(n.rsplit("-", 1)[-1]))

    def restore(self) -> Optional[str]:
        """Download the newest complete remote checkpoint into the local directory; its name, or None."""
        done = self.remote_complete()
        if not done:
            return None
        name = done[-1]
        with fileio.open(f"{self.remote}/{name}/{MANIFEST}", "r") as file:
            files = json.load(file)["files"]
        target = self.local / name
        for relative in files:
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            fileio.copy(f"{self.remote}/{name}/{relative}", str(target / relative), overwrite=True)
        self.uploaded.add(name)
        logger.info("restored checkpoint %s from %s", name, self.remote)
        return name

    def upload_new(self) -> None:
        for checkpoint in complete_local(self.local):
            if checkpoint.name in self.uploaded:
                continue
            try:
                self._upload(checkpoint)
            except FileNotFoundError:  # the Trainer rotated it away mid-copy: it has a newer one
                continue
            self.uploaded.add(checkpoint.name)
            for older in self.remote_complete()[:-1]:  # the newest complete one is always kept
                fileio.rmtree(f"{self.remote}/{older}")

    def _upload(self, checkpoint: Path) -> None:
        target = f"{self.remote}/{checkpoint.name}"
        files = sorted(str(p.relative_to(checkpoint)) for p in checkpoint.rglob("*") if p.is_file())
        fileio.makedirs(target)
        for relative in files:
            fileio.copy(str(checkpoint / relative), f"{target}/{relative}", overwrite=True)
        with fileio.open(f"{target}/{MANIFEST}", "w") as file:
            json.dump({"files": files}, file)

    @contextmanager
    def running(self) -> Iterator[None]:
        """Upload in a background thread while the block trains; afterwards, if training finished (it removes its
        checkpoint directory), remove the remote copy too, else upload what is left."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(self.interval_s):
                try:
                    self.upload_new()
                except Exception:  # noqa: BLE001  (a failed upload is retried on the next tick; training goes on)
                    logger.warning("checkpoint upload to %s failed; retrying", self.remote, exc_info=True)

        thread = threading.Thread(target=loop, name="checkpoint-mirror", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            if self.local.is_dir():
                self.upload_new()
            elif fileio.exists(self.remote):
                fileio.rmtree(self.remote)
            shutil.rmtree(self.local, ignore_errors=True)

