"""Run the real pipeline through the real `zenml` CLI in an isolated repo (own ZenML store, own MLflow DB)."""

import os
import subprocess
import sys
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parents[1]
ZENML = str(Path(sys.executable).with_name("zenml"))


def run(cmd: list[str], cwd: Path, timeout: int, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def setup_repo(root: Path) -> str:
    """The README's set-up step, in `root`: returns the MLflow tracking URI."""
    root.mkdir(parents=True, exist_ok=True)
    done = run([sys.executable, "-m", "llm_engineering.orchestration.stack", "--root", str(root)], root, 300)
    assert done.returncode == 0, done.stdout + done.stderr
    return f"sqlite:///{root / '.mlflow' / 'mlflow.db'}"


def write_config(path: Path, parameters: dict, **zenml_keys) -> Path:
    path.write_text(yaml.safe_dump({"enable_cache": True, **zenml_keys, "parameters": {"config": parameters}}))
    return path


def run_pipeline(repo: Path, config: Path, timeout: int = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    return run([ZENML, "pipeline", "run", "pipelines.finetune.finetune", "--config", str(config)], repo, timeout, env)
