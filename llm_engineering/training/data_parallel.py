"""Data-parallel SFT: `torchrun` (torch.distributed.run) starts `train.num_processes` copies of `train_adapter`, one
per GPU (NCCL) or as gloo processes on CPU; accelerate, inside the Trainer, shards each global batch across them and
averages the gradients (DDP). Only rank 0 writes the adapter and streams metrics.

The step's inputs travel to the ranks as files (the token columns with `Dataset.save_to_disk`, the configs as JSON),
which is why this is our own launch and not ZenML's `run_with_accelerate`: that one passes step inputs as
command-line strings, which cannot carry a dataset or an adapter directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, fields
from pathlib import Path
from typing import Optional

from llm_engineering import tracking
from llm_engineering.config import AdapterConfig, ModelConfig, TrainConfig
from llm_engineering.training.sft import TrainResult, token_dataset, train_adapter

WORKER = "llm_engineering.training.data_parallel_worker"


class DataParallelError(RuntimeError):
    """A data-parallel training process failed; the message names the rank and its error."""


def check_devices(cfg: TrainConfig) -> None:
    """On CUDA each process needs its own GPU: refuse before anything loads if fewer are visible."""
    import torch

    if cfg.num_processes > 1 and torch.cuda.is_available() and torch.cuda.device_count() < cfg.num_processes:
        raise DataParallelError(
            f"train.num_processes is {cfg.num_processes} but this process sees {torch.cuda.device_count()} GPU(s) "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')}): lower train.num_processes or give the "
            "step more GPUs (ResourceSettings gpu_count, or the local_cuda step operator's gpus)")


def train(model_cfg: ModelConfig, adapter_cfg: AdapterConfig, cfg: TrainConfig, initial_adapter: Path, train_rows,
          eval_rows, output_dir: Path, callbacks: Optional[list] = None, checkpoint_dir: Optional[Path] = None,
          mlflow_run: Optional[tuple[str, str]] = None) -> TrainResult:
    """`train_adapter` in this process, or across `cfg.num_processes` torchrun processes.

    `callbacks` apply in this process only; the ranks stream metrics into `mlflow_run` (run id, tracking URI)."""
    if cfg.num_processes == 1:
        return train_adapter(model_cfg, adapter_cfg, cfg, initial_adapter, train_rows, eval_rows, output_dir,
                             callbacks=callbacks, checkpoint_dir=checkpoint_dir)
    check_devices(cfg)
    with tempfile.TemporaryDirectory(prefix="data-parallel-") as job:
        job = Path(job)
        token_dataset(train_rows).save_to_disk(str(job / "train"))
        token_dataset(eval_rows).save_to_disk(str(job / "eval"))
        (job / "job.json").write_text(json.dumps({
            "model": model_cfg.model_dump(mode="json"),
            "adapter": adapter_cfg.model_dump(mode="json"),
            "train": cfg.model_dump(mode="json"),
            "initial_adapter": str(initial_adapter),
            "output_dir": str(output_dir),
            "checkpoint_dir": str(checkpoint_dir) if checkpoint_dir else None,
            "mlflow_run": list(mlflow_run) if mlflow_run else None,
        }))
        # --standalone: a rendezvous on a free local port, so concurrent runs on one machine do not collide
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc_per_node", str(cfg.num_processes), "-m", WORKER, str(job)]
        finished = subprocess.run(command, env=worker_env())
        if finished.returncode != 0:
            raise DataParallelError(failure_message(job, cfg.num_processes, finished.returncode))
        result = json.loads((job / "result.json").read_text())
    result["adapter_dir"] = Path(result["adapter_dir"])
    tracking.replay_to_comet(result["log_history"])
    return TrainResult(**{f.name: result[f.name] for f in fields(TrainResult)})


def worker_env() -> dict[str, str]:
    """This environment, with the project importable from the ranks however the step was started."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}


def failure_message(job: Path, processes: int, returncode: int) -> str:
    errors = sorted(job.glob("error-rank*.txt"))
    if errors:
        first = errors[0]
        message = first.read_text().split("\n\n")[0].strip()  # the traceback follows; it is in the step's log too
        return f"data-parallel training failed on {first.stem.removeprefix('error-')}: {message}"
    return (f"data-parallel training ({processes} processes) exited with code {returncode} before a rank reported "
            "an error; the ranks' output is in this step's log")


def write_result(job: Path, result: TrainResult) -> None:
    data = asdict(result)
    data["adapter_dir"] = str(result.adapter_dir)
    (job / "result.json").write_text(json.dumps(data))
