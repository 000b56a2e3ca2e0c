"""The default run's quality over seeds: `zenml pipeline run` of a config at several data/adapter/training seeds.

    python bench/default_seeds.py [--config configs/default.yaml] [--seeds 42 1 2] [--out FILE.json]
                                  [--set train.max_steps=70 --set data.sources.0.num_rows=900 ...]

Each seed sets `data.seed`, `adapter.seed` and `train.seed` (the rows drawn, the adapter's initialisation, the order
and dropout of training); everything else is the config as shipped, plus any `--set key.path=value`. The runs share
one fresh temporary repository (set-up excluded), one after another: run nothing else on the machine meanwhile, or
the times mean nothing (the scores do not depend on it). The runs use a ZenML store of their own, so the user's store
and step cache are left as they were. Prints a table (task metric, regression_drop, the eval rows answered wrongly,
wall time) with the mean and the minimum, and writes JSON. `--stop-below 0.9 --max-drop 0.10` skips the remaining
seeds once one misses either target (a study's minimum is then known to miss).
"""

import argparse
import atexit
import json
import os
import statistics
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def set_key(config: dict, assignment: str) -> None:
    path, value = assignment.split("=", 1)
    *parents, leaf = path.split(".")
    for key in parents:  # a number indexes a list: data.sources.0.num_rows
        config = config[int(key)] if isinstance(config, list) else config.setdefault(key, {})
    config[int(leaf) if isinstance(config, list) else leaf] = yaml.safe_load(value)


def run_seed(repo: Path, document: dict, seed: int, out_dir: Path) -> dict:
    import mlflow
    from zenml.client import Client

    cfg = document["parameters"]["config"]
    for section in ("data", "adapter", "train"):
        cfg.setdefault(section, {})["seed"] = seed
    cfg["export"] = {**cfg.get("export", {}), "output_dir": str(out_dir / f"seed-{seed}"), "overwrite": True}
    document["run_name"] = f"default-seeds-{seed}-{time.time_ns()}"  # found by name in the store
    config = repo / f"seed-{seed}.yaml"
    config.write_text(yaml.safe_dump(document))
    start = time.perf_counter()
    done = subprocess.run([str(BIN / "zenml"), "pipeline", "run", "pipelines.finetune.finetune", "--config",
                           str(config)], cwd=repo, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"seed {seed} failed:\n{(done.stdout + done.stderr)[-4000:]}")
    run = Client(root=repo).get_pipeline_run(document["run_name"])
    summary = run.steps["export_model"].run_metadata
    metric = next(k for k in summary if k.startswith("finetuned_json_exact_match"))
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo / '.mlflow' / 'mlflow.db'}")
    [tracked] = client.search_runs([client.get_experiment_by_name("finetune").experiment_id],
                                   f'tags.mlflow.runName = "{run.name}"')
    table = json.loads(Path(client.download_artifacts(tracked.info.run_id, "eval_samples.json", str(repo))).read_text())
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    wrong = [{"prompt": r["prompt"][-120:], "reference": r["reference"], "output": r["finetuned_output"]}
             for r in rows if r["set"] == "task" and r["finetuned_score"] < 1.0]
    return {"seed": seed, metric: summary[metric], "regression_drop": summary["regression_drop"],
            "train_seconds": tracked.data.metrics.get("step_seconds_train_sft"), "wall_seconds": round(wall, 1),
            "wrong": wrong}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument("--set", action="append", default=[], dest="assignments", metavar="KEY.PATH=VALUE")
    parser.add_argument("--out", default="bench/results/default_seeds.json")
    parser.add_argument("--stop-below", type=float, default=None, help="skip the remaining seeds below this score")
    parser.add_argument("--max-drop", type=float, default=None, help="... or above this regression_drop")
    args = parser.parse_args()

    document = yaml.safe_load((ROOT / args.config).read_text())
    for assignment in args.assignments:
        set_key(document["parameters"]["config"], assignment)
    repo = Path(tempfile.mkdtemp(prefix="default-seeds-"))
    atexit.register(shutil.rmtree, repo, ignore_errors=True)  # a run leaves GBs of artifacts: the JSON is the result
    os.environ["ZENML_CONFIG_PATH"] = str(repo / "zenml-config")  # for the runs and the Client: not the user's store
    for name in ("configs", "data", "pipelines", "steps"):  # the config's relative paths and the pipeline's source
        (repo / name).symlink_to(ROOT / name)
    setup = subprocess.run([sys.executable, "-m", "llm_engineering.orchestration.stack", "--root", str(repo)],
                           cwd=repo, capture_output=True, text=True)
    if setup.returncode:
        raise SystemExit(setup.stdout + setup.stderr)

    results = []
    for seed in args.seeds:
        results.append(run_seed(repo, json.loads(json.dumps(document)), seed, repo / "outputs"))
        score = next(v for k, v in results[-1].items() if k.startswith("finetuned_"))
        if (args.stop_below is not None and score < args.stop_below) or (
                args.max_drop is not None and results[-1]["regression_drop"] > args.max_drop):
            print(f"seed {seed} missed a target ({score:.3f}, regression_drop {results[-1]['regression_drop']:.3f}): "
                  "the remaining seeds are skipped")
            break
    metric = next(k for k in results[0] if k.startswith("finetuned_"))
    print(f"\n{args.config} {' '.join(args.assignments)}")
    print(f"{'seed':>6} {metric:>28} {'regression_drop':>16} {'train s':>8} {'wall s':>8}  wrong answers")
    for r in results:
        print(f"{r['seed']:>6} {r[metric]:>28.3f} {r['regression_drop']:>16.3f} {r['train_seconds'] or 0:>8.0f} "
              f"{r['wall_seconds']:>8.0f}  " + "; ".join(f"{w['output']}" for w in r["wrong"])[:400])
    scores = [r[metric] for r in results]
    drops = [r["regression_drop"] for r in results]
    print(f"{'mean':>6} {statistics.mean(scores):>28.3f} {statistics.mean(drops):>16.3f}")
    print(f"{'worst':>6} {min(scores):>28.3f} {max(drops):>16.3f}")
    Path(args.out).write_text(json.dumps({"config": args.config, "set": args.assignments, "runs": results,
                                          "mean": statistics.mean(scores), "min": min(scores),
                                          "max_regression_drop": max(drops)}, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
