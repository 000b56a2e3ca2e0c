"""Checkpoints a killed training run resumes from (`train.checkpoint_steps`)."""

from pathlib import Path
from typing import Optional


def last_checkpoint(directory: Path) -> Optional[Path]:
    """The newest complete `checkpoint-N` in `directory` (a checkpoint killed mid-write has no trainer_state.json)."""
    if not directory.is_dir():
        return None
    complete = [p for p in directory.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return max(complete, key=checkpoint_step, default=None)


def checkpoint_step(path: Path) -> int:
    return int(path.name.rsplit("-", 1)[-1])
