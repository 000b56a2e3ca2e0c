"""Every shipped config as shipped: `zenml pipeline run` of each file in configs/ at full size, one after another.

    python bench/shipped_configs.py [--only data_tools orpo ...] [--out bench/results/shipped_configs.json]

The suite runs the configs small (tests/test_shipped_configs.py); this runs them as a user does, in one fresh
temporary repository (its set-up excluded; `dpo` runs after `default`, whose champion it starts from). A config that
needs a GPU or the hub is compiled only (`python -m pipelines.plan`), and the table says so. Prints a table (status,
wall time, the gate metric, the reason of a failure) and writes JSON. Nothing else should run on the machine meanwhile.
"""

import argparse
import atexit
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
COMPILE_ONLY = {"gpu_hub_model": "needs a CUDA GPU and the hub", "schedule": "a schedule file, not a run config"}
ORDER = ["default", "dpo"]  # dpo starts from default's registered champion


def pipeline_of(document: dict) -> str:
    preference = document.get("parameters", {}).get("config", {}).get("preference")
    return "pipelines.preference.preference" if preference else "pipelines.finetune.finetune"


def run_config(repo: Path, name: str) -> dict:
    from zenml.client import Client

    document = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())
    if name in COMPILE_ONLY:
        return {"config": name, "status": "not run", "reason": COMPILE_ONLY[name]}
    document["run_name"] = f"shipped-{name}-{time.time_ns()}"  # the store is the user's: find this run by name
    config = repo / f"{name}.yaml"
    config.write_text(yaml.safe_dump(document))
    start = time.perf_counter()
    done = subprocess.run([str(BIN / "zenml"), "pipeline", "run", pipeline_of(document), "--config", str(config)],
                          cwd=repo, capture_output=True, text=True)
    wall = time.perf_counter() - start
    result = {"config": name, "wall_seconds": round(wall, 1)}
    if done.returncode:
        console = (done.stdout + done.stderr).strip().splitlines()
        failed = [line.strip() for line in console if line.strip().startswith("failed ")]
        return {**result, "status": "FAILED", "reason": (failed or console[-1:])[0][:300]}
    metadata = Client(root=repo).get_pipeline_run(document["run_name"]).steps["export_model"].run_metadata
    gate = {k: v for k, v in metadata.items() if k.startswith("finetuned_") and isinstance(v, (int, float))
            and not k.endswith(("stop_rate", "regression_score"))}
    return {**result, "status": "ok", **gate, "regression_drop": metadata.get("regression_drop"),
            "promotion": metadata.get("promotion")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", help="config names (configs/NAME.yaml); default: all")
    parser.add_argument("--out", default="bench/results/shipped_configs.json")
    args = parser.parse_args()

    names = args.only or sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))  # --only: in the order given
    names = sorted(names, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER))
    repo = Path(tempfile.mkdtemp(prefix="shipped-configs-"))
    atexit.register(shutil.rmtree, repo, ignore_errors=True)  # a run leaves GBs of artifacts: the JSON is the result
    for name in ("configs", "data", "pipelines", "steps"):  # the configs' relative paths and the pipelines' source
        (repo / name).symlink_to(ROOT / name)
    setup = subprocess.run([sys.executable, "-m", "llm_engineering.orchestration.stack", "--root", str(repo)],
                           cwd=repo, capture_output=True, text=True)
    if setup.returncode:
        raise SystemExit(setup.stdout + setup.stderr)
    results = []
    for name in names:
        results.append(run_config(repo, name))
        print(json.dumps(results[-1]), flush=True)
    print(f"\n{'config':<24} {'status':<8} {'wall s':>7}  result")
    for r in results:
        scores = ", ".join(f"{k} {v:.3f}" for k, v in r.items() if k.startswith("finetuned_"))
        detail = r.get("reason") or f"{scores}, regression_drop {r.get('regression_drop') or 0:.3f}, @{r.get('promotion')}"
        print(f"{r['config']:<24} {r['status']:<8} {r.get('wall_seconds', 0):>7.0f}  {detail}")
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
