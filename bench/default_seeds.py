"""The default run's quality over seeds and precisions: `zenml pipeline run` of a config at several
data/adapter/training seeds, in fp32 and in bf16.

    python bench/default_seeds.py [--config configs/default.yaml] [--seeds 42 1 2] [--precisions fp32 bf16]
                                  [--out FILE.json] [--set train.max_steps=70 --set data.sources.0.num_rows=900 ...]

Each seed sets `data.seed`, `adapter.seed` and `train.seed` (the rows drawn, the adapter's initialisation, the order
and dropout of training). Each precision sets the model, quantization compute, training and merge dtypes: fp32 is
what `auto` chooses on CPUs without AVX-512 BF16 (most laptops), bf16 what it chooses on CPUs with it; `auto` keeps
the config's own choice. A CPU without native bf16 runs bf16 emulated, many times slower: the scores still hold, the
times do not. Everything else is the config as shipped, plus any `--set key.path=value`. Each run registers its
own model, so the gate judges each as a first version. The runs share one fresh temporary repository (set-up
excluded), one after another: run nothing else on the machine meanwhile, or the times mean nothing (the scores do
not depend on it). The runs use a ZenML store of their own, so the user's store and step cache are left as they
were. Prints a table (the gate's decision, the task metric and general_drop with their 95 % intervals,
regression_drop, the step times) with the worst over all runs, and writes JSON with the CPU after each run.
`--stop-below 0.8 --max-drop 0.10` skips the remaining runs once one misses either target (the task score, or the
upper end of general_drop's interval).
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


PRECISIONS = {"fp32": ("float32", "no"), "bf16": ("bfloat16", "bf16")}


def set_precision(cfg: dict, precision: str) -> None:
    if precision == "auto":
        return
    dtype, mixed = PRECISIONS[precision]
    cfg.setdefault("model", {})["dtype"] = dtype
    if cfg["model"].get("quantization"):
        cfg["model"]["quantization"]["compute_dtype"] = dtype
    cfg.setdefault("train", {})["mixed_precision"] = mixed
    cfg.setdefault("merge", {})["dtype"] = dtype


def cpu() -> dict:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in flags.splitlines() if line.startswith("model name")), "")
    return {"model": model, "cores": os.cpu_count(), "avx512_bf16": "avx512_bf16" in flags,
            "amx_bf16": "amx_bf16" in flags, "avx512f": "avx512f" in flags}


def run_seed(repo: Path, document: dict, seed: int, out_dir: Path, precision: str = "auto") -> dict:
    import mlflow
    from zenml.client import Client

    cfg = document["parameters"]["config"]
    for section in ("data", "adapter", "train"):
        cfg.setdefault(section, {})["seed"] = seed
    set_precision(cfg, precision)
    cfg["export"] = {**cfg.get("export", {}), "output_dir": str(out_dir / f"seed-{seed}"), "overwrite": True}
    # each run its own registered model: the gate then judges every run as a first version (no champion to beat)
    cfg["export"]["registered_model_name"] = f"{cfg['export'].get('registered_model_name', 'seeds')}-{precision}-{seed}"
    document["run_name"] = f"default-seeds-{precision}-{seed}-{time.time_ns()}"  # found by name in the store
    config = repo / f"seed-{precision}-{seed}.yaml"
    config.write_text(yaml.safe_dump(document))
    start = time.perf_counter()
    done = subprocess.run([str(BIN / "zenml"), "pipeline", "run", "pipelines.finetune.finetune", "--config",
                           str(config)], cwd=repo, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"seed {seed} failed:\n{(done.stdout + done.stderr)[-4000:]}")
    run = Client(root=repo).get_pipeline_run(document["run_name"])
    summary = run.steps["export_model"].run_metadata
    metric = "finetuned_json_exact_match"
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo / '.mlflow' / 'mlflow.db'}")
    [tracked] = client.search_runs([client.get_experiment_by_name("finetune").experiment_id],
                                   f'tags.mlflow.runName = "{run.name}"')
    table = json.loads(Path(client.download_artifacts(tracked.info.run_id, "eval_samples.json", str(repo))).read_text())
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    wrong = [{"prompt": r["prompt"][-120:], "reference": r["reference"], "output": r["finetuned_output"]}
             for r in rows if r["set"] == "task" and r["finetuned_score"] < 1.0]
    kept = ("_ci_low", "_ci_high", "general_drop", "regression_drop", "stop_rate", "general_agreement",
            "general_probability", "general_top1_drop")
    return {"seed": seed, "precision": precision, "metric": metric, metric: summary[metric],
            "promotion": summary.get("promotion"),
            "promotion_reason": summary.get("promotion_reason"),
            **{k: v for k, v in summary.items()
               if k.endswith(kept) or k.startswith(("general_drop", "regression_drop"))},
            "step_seconds": {k.removeprefix("step_seconds_"): round(v, 1) for k, v in tracked.data.metrics.items()
                             if k.startswith("step_seconds_")},
            "train_seconds": tracked.data.metrics.get("step_seconds_train_sft"), "wall_seconds": round(wall, 1),
            "wrong": wrong}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "auto"])
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
    for precision in args.precisions:
        for seed in args.seeds:
            results.append(run_seed(repo, json.loads(json.dumps(document)), seed, repo / "outputs", precision))
            write_results(args, results)
            print(row_line(results[-1]), flush=True)
            score = results[-1][results[-1]["metric"]]
            if (args.stop_below is not None and score < args.stop_below) or (
                    args.max_drop is not None and results[-1]["general_drop_ci_high"] > args.max_drop):
                print(f"seed {seed} missed a target: the remaining runs are skipped")
                break
    print(f"\n{args.config} {' '.join(args.assignments)}  CPU: {cpu()}")
    print(HEADER)
    for r in results:
        print(row_line(r))
    print(f"worst: {write_results(args, results)['worst']}")


def write_results(args, results: list[dict]) -> dict:
    """The JSON of the runs so far: after each run, so a study cut short keeps what it measured."""
    metric = results[0]["metric"]
    scores = [r[metric] for r in results]
    worst = {"min_" + metric: min(scores), "min_" + metric + "_ci_low": min(r[metric + "_ci_low"] for r in results),
             "max_general_drop": max(r["general_drop"] for r in results),
             "max_general_drop_ci_high": max(r["general_drop_ci_high"] for r in results),
             "promoted": sum(r["promotion"] == "champion" for r in results), "runs": len(results)}
    document = {"config": args.config, "set": args.assignments, "cpu": cpu(), "worst": worst,
                "mean": statistics.mean(scores), "runs": results}
    Path(args.out).write_text(json.dumps(document, indent=2, ensure_ascii=False))
    return document


HEADER = (f"{'prec':>5} {'seed':>5} {'gate':>10} {'exact match [95% CI]':>22} {'general_drop [95% CI]':>24} "
          f"{'probes':>7} {'train s':>8} {'eval s':>7} {'wall s':>7}")


def row_line(r: dict) -> str:
    metric = r["metric"]
    steps = r["step_seconds"]
    return (f"{r['precision']:>5} {r['seed']:>5} {r['promotion'] or '-':>10} "
            f"{r[metric]:.3f} [{r[metric + '_ci_low']:.3f}, {r[metric + '_ci_high']:.3f}] "
            f"{r['general_drop']:>7.3f} [{r['general_drop_ci_low']:.3f}, {r['general_drop_ci_high']:.3f}] "
            f"{r.get('regression_drop', float('nan')):>7.3f} {steps.get('train_sft', 0):>8.0f} "
            f"{steps.get('evaluate_base', 0) + steps.get('evaluate_finetuned', 0):>7.0f} {r['wall_seconds']:>7.0f}")


if __name__ == "__main__":
    main()
