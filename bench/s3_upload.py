"""Peak memory and time of storing a merged model (a directory of safetensors) in an S3 artifact store: our checkpoint
materializer (files as they are) vs ZenML's Path materializer (a .tar.gz of the directory) vs boto3's upload_file.

    python bench/s3_upload.py [--mib 400] [--out bench/results/s3_upload.json]

The S3 API is moto's server on loopback (a real HTTP S3 API; it keeps objects in its own process). The store is
registered as a user does (`zenml secret create`, `stack --s3`), in a throw-away ZenML config. Each upload runs in its
own process, so its VmHWM is its own; "above floor" subtracts a process that imports the same and touches the store.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from s3_server import KEY, moto_s3, s3_stack_commands

BUCKET = "bench"
METHODS = ("imports_only", "checkpoint_materializer", "zenml_path_materializer", "boto3_upload_file")


def peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(method: str, model: Path, endpoint: str) -> None:
    """One upload in this process; prints its peak RSS and seconds as JSON."""
    from zenml.client import Client
    from zenml.io import fileio

    from llm_engineering.artifacts import CheckpointDir
    from llm_engineering.orchestration.materializers import CheckpointDirMaterializer

    store = Client().active_stack.artifact_store  # registers the s3:// filesystem with the secret's credentials
    uri = f"{store.path}/{method}-{time.time_ns()}"
    fileio.exists(store.path)
    start = time.perf_counter()
    if method == "checkpoint_materializer":
        CheckpointDirMaterializer(uri).save(CheckpointDir(model))
    elif method == "zenml_path_materializer":
        from zenml.materializers.path_materializer import PathMaterializer

        PathMaterializer(uri).save(model)
    elif method == "boto3_upload_file":
        import boto3

        s3 = boto3.client("s3", endpoint_url=endpoint, **KEY)
        for file in sorted(model.iterdir()):
            s3.upload_file(str(file), BUCKET, f"boto3/{file.name}")
    print(json.dumps({"peak_rss": peak_rss_bytes(), "seconds": round(time.perf_counter() - start, 2)}))


def make_model(directory: Path, mib: int) -> None:
    """A merged model's shape on disk: safetensors shards of random weights (they do not compress) and a config."""
    import torch
    from safetensors.torch import save_file

    directory.mkdir(parents=True)
    shard = 200
    for index in range((mib + shard - 1) // shard):
        size = min(shard, mib - index * shard) * 2**20 // 4
        save_file({f"layer{index}.weight": torch.randn(size)}, str(directory / f"model-{index:05d}.safetensors"))
    (directory / "config.json").write_text(json.dumps({"model_type": "llama"}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=400)
    parser.add_argument("--out", type=Path, default=Path("bench/results/s3_upload.json"))
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "MODEL", "ENDPOINT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), args.child[2])
        return
    with tempfile.TemporaryDirectory(prefix="s3-bench-") as scratch:
        scratch = Path(scratch)
        env = {**os.environ, "ZENML_CONFIG_PATH": str(scratch / "zenml"), "ZENML_ANALYTICS_OPT_IN": "false"}
        with moto_s3(BUCKET) as (endpoint, _):
            repo = scratch / "repo"
            repo.mkdir()
            for command in s3_stack_commands(repo, BUCKET, endpoint):
                subprocess.run(command, cwd=repo, env=env, check=True, capture_output=True)
            model = scratch / "model"
            make_model(model, args.mib)
            size = sum(f.stat().st_size for f in model.iterdir())
            rows = {}
            for method in METHODS:
                done = subprocess.run([sys.executable, __file__, "--child", method, str(model), endpoint], cwd=repo,
                                      env=env, capture_output=True, text=True, check=True)
                rows[method] = json.loads(done.stdout.strip().splitlines()[-1])
    floor = rows["imports_only"]["peak_rss"]
    print(f"storing a {size / 2**20:.0f} MiB model directory in an S3 artifact store (moto on loopback)")
    print(f"{'method':<26} {'peak RSS MiB':>13} {'above floor MiB':>16} {'seconds':>8}")
    for method, row in rows.items():
        row["above_floor_mib"] = round((row["peak_rss"] - floor) / 2**20, 1)
        print(f"{method:<26} {row['peak_rss'] / 2**20:>13.0f} {row['above_floor_mib']:>16.1f} {row['seconds']:>8.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model_mib": round(size / 2**20, 1), "results": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
