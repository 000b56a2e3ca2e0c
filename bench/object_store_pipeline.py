"""The default pipeline on the local artifact store vs on an S3 artifact store (moto's S3 server on loopback).

    python bench/object_store_pipeline.py [--config configs/default.yaml] [--out bench/results/object_store_pipeline.json]

Each run is `zenml pipeline run` in a fresh repository with its own ZenML store (nothing cached), set-up excluded from
the timing; the S3 stack is registered as a user does (`zenml secret create`, `stack --s3`). Reports the wall times,
their ratio and what landed in the bucket. Run it on an otherwise idle machine.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from s3_server import moto_s3, s3_stack_commands

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
BUCKET = "bench"


def timed(command: list[str], cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
    return time.perf_counter() - start


def repo_with_config(scratch: Path, name: str, config: str) -> tuple[Path, Path, dict]:
    repo = scratch / name
    repo.mkdir()
    shutil.copytree(ROOT / "data", repo / "data")  # as in a clone: the config names its files from the root
    document = yaml.safe_load((ROOT / config).read_text())
    document["parameters"]["config"]["export"]["output_dir"] = str(repo / "outputs" / "export")
    path = repo / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    env = {**os.environ, "ZENML_CONFIG_PATH": str(repo / ".zenconfig"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "ZENML_ANALYTICS_OPT_IN": "false", "TQDM_DISABLE": "1"}
    return repo, path, env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--out", default="bench/results/object_store_pipeline.json")
    args = parser.parse_args()
    run = [str(BIN / "zenml"), "pipeline", "run", "pipelines.finetune.finetune", "--config"]
    stack = [sys.executable, "-m", "llm_engineering.orchestration.stack", "--root"]
    with tempfile.TemporaryDirectory(prefix="object-store-") as scratch:
        scratch = Path(scratch)
        repo, config, env = repo_with_config(scratch, "local", args.config)
        timed(stack + [str(repo)], repo, env)
        local_s = timed(run + [str(config)], repo, env)

        with moto_s3(BUCKET) as (endpoint, s3):
            repo, config, env = repo_with_config(scratch, "s3", args.config)
            for command in s3_stack_commands(repo, BUCKET, endpoint):
                timed(command, repo, env)
            s3_s = timed(run + [str(config)], repo, env)
            objects = [item for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
                       for item in page.get("Contents", [])]
    result = {"config": args.config, "local_store_s": round(local_s, 1), "s3_store_s": round(s3_s, 1),
              "ratio": round(s3_s / local_s, 3), "bucket_objects": len(objects),
              "bucket_mib": round(sum(o["Size"] for o in objects) / 2**20, 1)}
    print(f"{'what':<28}{'value':>10}")
    for key, value in result.items():
        if key != "config":
            print(f"{key:<28}{value:>10}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
