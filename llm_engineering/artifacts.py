"""Artifact types the steps hand each other. Plain Python, no ZenML: the materializers live in `orchestration`."""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


@dataclass(frozen=True)
class CheckpointDir:
    """A flat directory of checkpoint files: a PEFT adapter or a full Hugging Face model (safetensors + JSON).

    `temporary` marks a scratch directory the step made for this output: the materializer may move it into the
    artifact store instead of copying it, and nothing else refers to it afterwards.
    """

    path: Path
    temporary: bool = False

    def files(self) -> list[Path]:
        return sorted(p for p in Path(self.path).iterdir() if p.is_file())

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files())


@contextmanager
def scratch_output(prefix: str) -> Iterator[Path]:
    """A temporary directory for a step's output: removed if the step fails, handed to the materializer otherwise."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise


def first_rows(dataset, n: int) -> list[dict]:
    """The first `n` rows of a `datasets.Dataset` (or a list) as dicts: a slice, the split is never copied whole."""
    if isinstance(dataset, list):
        return dataset[:n]
    return dataset.select(range(min(n, len(dataset)))).to_list()


class Report(dict):
    """A step's summary (a dict of JSON values) plus its views for the ZenML dashboard: file name -> content (`.png`
    bytes, `.html` or `.md` text, see `llm_engineering.views`). The views are written once, when the artifact is
    stored; a loaded report is the dict alone, so downstream steps see a plain dict."""

    def __init__(self, data=(), views: dict[str, bytes | str] | None = None):
        super().__init__(data)
        self.views = dict(views or {})
