"""What ZenML + MLflow cost: `zenml pipeline run` with the default config vs the same work as a bare Python script.

    python bench/pipeline_overhead.py [--config configs/default.yaml] [--out bench/results/pipeline_overhead.json]

The bare script (`--bare`) calls the same library functions the six steps call, in one process, with no ZenML, no
MLflow and no artifact store: prepare the data, load and check the base, inject the adapter, train, merge with the
fidelity check, evaluate base and fine-tuned, write and verify the export. Both run as fresh processes, imports
included, in a fresh temporary repo (set-up excluded from the timing). Also measured: ZenML start-up (import + client
+ active stack) in a fresh process. Prints a table and writes JSON.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def bare(config_path: Path, output_dir: Path) -> None:
    from llm_engineering.config import load_run_config_file
    from llm_engineering.data.prepare import prepare
    from llm_engineering.evaluation import evaluate_checkpoint
    from llm_engineering.evaluation.compile_checks import check_evaluation
    from llm_engineering.export.export_dir import load_exported, verify_export, write_export
    from llm_engineering.merge.merge_adapter import merge_adapter
    from llm_engineering.model.adapter import inject_adapter, save_adapter
    from llm_engineering.model.loading import load_base, load_model, load_tokenizer
    from llm_engineering.training.sft import train_adapter

    cfg = load_run_config_file(config_path)
    tokenizer = load_tokenizer(cfg.model)
    data = prepare(cfg.data, tokenizer, cfg.train.max_length)
    load_base(cfg.model)
    work = Path(tempfile.mkdtemp(prefix="bare-"))
    peft_model, _ = inject_adapter(load_model(cfg.model), cfg.adapter)
    save_adapter(peft_model, work / "initial")
    del peft_model
    train_adapter(cfg.model, cfg.adapter, cfg.train, work / "initial", data.train, data.eval, work / "trained")
    merge_adapter(cfg.model, cfg.merge, work / "trained", data.eval, work / "merged")
    # the evaluate stage, twice, as the pipeline runs it
    metric = check_evaluation(cfg)
    scoring = (data.eval, cfg.eval, metric, cfg.merge.dtype, cfg.train.max_length)
    base = evaluate_checkpoint(cfg.model, None, *scoring)
    tuned = evaluate_checkpoint(cfg.model, work / "merged", *scoring)
    model, merged_tokenizer = load_exported(work / "merged")
    out = write_export(model, merged_tokenizer, output_dir, "bare run", overwrite=True,
                       max_shard_size=cfg.export.max_shard_size, adapter_dir=work / "trained")
    verify_export(out, model, data.eval.select(range(cfg.export.verify_prompts)).to_list())
    print({**base.metrics, **tuned.metrics})


def timed(command: list[str], cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--out", default="bench/results/pipeline_overhead.json")
    parser.add_argument("--bare", nargs=2, metavar=("CONFIG", "OUTPUT_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        bare(Path(args.bare[0]), Path(args.bare[1]))
        return

    with tempfile.TemporaryDirectory(prefix="overhead-") as scratch:
        repo = Path(scratch)
        document = yaml.safe_load((ROOT / args.config).read_text())
        document["parameters"]["config"]["export"]["output_dir"] = str(repo / "outputs" / "pipeline")
        config = repo / "config.yaml"
        config.write_text(yaml.safe_dump(document))
        # an isolated ZenML store (not the user's global one), offline, as the Makefile runs it
        env = {**os.environ, "ZENML_CONFIG_PATH": str(repo / ".zenconfig"), "HF_HUB_OFFLINE": "1",
               "HF_DATASETS_OFFLINE": "1", "ZENML_ANALYTICS_OPT_IN": "false", "TQDM_DISABLE": "1"}
        timed([sys.executable, "-m", "llm_engineering.orchestration.stack", "--root", str(repo)], repo, env)  # set-up
        startup = timed([sys.executable, "-c", "from zenml.client import Client; Client().active_stack"], repo, env)
        bare_s = timed([sys.executable, __file__, "--bare", str(config), str(repo / "outputs" / "bare")], ROOT, env)
        pipeline_s = timed([str(BIN / "zenml"), "pipeline", "run", "pipelines.finetune.finetune", "--config",
                            str(config)], repo, env)
    result = {"config": args.config, "zenml_startup_s": round(startup, 1), "bare_script_s": round(bare_s, 1),
              "zenml_pipeline_run_s": round(pipeline_s, 1), "ratio": round(pipeline_s / bare_s, 3)}
    print(f"{'what':<36}{'seconds':>9}")
    for key in ("zenml_startup_s", "bare_script_s", "zenml_pipeline_run_s"):
        print(f"{key:<36}{result[key]:>9}")
    print(f"{'pipeline / bare':<36}{result['ratio']:>9}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
