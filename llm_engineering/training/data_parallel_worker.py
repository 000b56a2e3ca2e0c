"""One data-parallel training process, started by torchrun from data_parallel.py: `python -m <this> JOB_DIR`."""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

import torch


def main(job: Path) -> None:
    from datasets import load_from_disk

    from llm_engineering import tracking
    from llm_engineering.config import AdapterConfig, ModelConfig, TrainConfig
    from llm_engineering.training.data_parallel import write_result
    from llm_engineering.training.sft import train_adapter

    spec = json.loads((job / "job.json").read_text())
    rank = int(os.environ["RANK"])
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))  # before loading: the model goes to this rank's GPU
    callbacks = [tracking.mlflow_metrics_callback(*spec["mlflow_run"])] if spec["mlflow_run"] and rank == 0 else None
    result = train_adapter(
        ModelConfig.model_validate(spec["model"]),
        AdapterConfig.model_validate(spec["adapter"]),
        TrainConfig.model_validate(spec["train"]),
        Path(spec["initial_adapter"]),
        load_from_disk(str(job / "train")),
        load_from_disk(str(job / "eval")),
        Path(spec["output_dir"]),
        callbacks=callbacks,
        checkpoint_dir=Path(spec["checkpoint_dir"]) if spec["checkpoint_dir"] else None,
    )
    if rank == 0:
        write_result(job, result)


if __name__ == "__main__":
    job_dir = Path(sys.argv[1])
    try:
        main(job_dir)
    except BaseException as exc:  # the launcher reports the first rank's error by name
        (job_dir / f"error-rank{os.environ.get('RANK', '?')}.txt").write_text(
            f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc()}")
        raise
