"""Run the real pipeline: through the real `zenml` CLI (a process of its own, as users run it), or in this process
(the same `with_options(config_path=...)()` call the CLI makes, without paying ZenML's ~15 s start-up again) where the
CLI's own behaviour is not what a test checks."""

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parents[1]
ZENML = str(Path(sys.executable).with_name("zenml"))


def run(cmd: list[str], cwd: Path, timeout: int, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def setup_repo(root: Path, env: dict | None = None) -> str:
    """The README's set-up step, in `root`: returns the MLflow tracking URI."""
    root.mkdir(parents=True, exist_ok=True)
    done = run([sys.executable, "-m", "llm_engineering.orchestration.stack", "--root", str(root)], root, 300, env)
    assert done.returncode == 0, done.stdout + done.stderr
    return f"sqlite:///{root / '.mlflow' / 'mlflow.db'}"


def write_config(path: Path, parameters: dict, **zenml_keys) -> Path:
    path.write_text(yaml.safe_dump({**zenml_keys, "parameters": {"config": parameters}}))
    return path


def run_pipeline(repo: Path, config: Path, timeout: int = 900, env: dict | None = None,
                 pipeline: str = "pipelines.finetune.finetune") -> subprocess.CompletedProcess:
    return run([ZENML, "pipeline", "run", pipeline, "--config", str(config)], repo, timeout, env)


class StepFailed(Exception):
    pass


@contextmanager
def in_repo(repo):
    """This process in `repo` (a SharedRepo) as `zenml pipeline run` is in it: its ZenML client, the stack's MLflow
    tracker and the working directory, which ZenML takes its source root from (a pytest-xdist worker's main module
    has no file to take it from) and a config's relative paths (outputs/, data/) are resolved against. ZenML's MLflow
    tracker exports MLFLOW_TRACKING_URI: the environment is restored, so the session's later subprocesses do not
    inherit it."""
    repo.activate()
    cwd, environ = os.getcwd(), dict(os.environ)
    os.chdir(repo.root)
    try:
        yield
    finally:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(environ)


def run_in_process(repo, config: Path, pipeline: str = "pipelines.finetune.finetune"):
    """Runs `pipeline` with `config` in this process, in `repo` (a SharedRepo); returns the run. A config refused when
    the pipeline compiles raises its error; a failed step raises StepFailed with what ZenML recorded of its exception
    (the reason the CLI prints)."""
    from zenml.client import Client
    from zenml.enums import ExecutionStatus
    from zenml.utils import source_utils

    with in_repo(repo):
        instance = source_utils.load(pipeline).with_options(config_path=str(config))
        try:
            response = instance()
        except RuntimeError as exc:
            if "Pipeline run has failed" not in str(exc):
                raise
            run = Client().get_pipeline(instance.name).last_run
            raise StepFailed("\n".join(f"{name}: {step.exception_info.traceback}" for name, step in run.steps.items()
                                       if step.status == ExecutionStatus.FAILED and step.exception_info)) from None
    return Client().get_pipeline_run(response.id)


def tiny_parameters(tiny_model_dir, learning_rate=5e-3):
    return {
        "data": {"num_rows": 40, "eval_rows": 4},
        "model": {"source": "local", "name_or_path": str(tiny_model_dir), "dtype": "float32",
                  "quantization": {"method": "4bit", "compute_dtype": "float32"}},
        "adapter": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"},
        "train": {"learning_rate": learning_rate, "max_steps": 4, "per_device_batch_size": 4, "logging_steps": 1,
                  "eval_steps": 4, "max_length": 160, "mixed_precision": "no", "checkpoint_steps": 2},
        "merge": {"dtype": "float32", "max_logit_diff": 1e-4},
        "export": {"output_dir": "outputs/tiny", "registered_model_name": "tiny-booking"},
        "eval": {"max_rows": 4, "max_new_tokens": 8, "batch_size": 4},
    }


def free_port_env() -> dict:
    """MASTER_ADDR/MASTER_PORT on a free loopback port, for torch.distributed children."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
