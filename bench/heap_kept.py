"""DPO on the CPU with glibc's default allocator vs the kept heap (llm_engineering/training/heap.py), side by side.

    python bench/heap_kept.py                  # configs/dpo.yaml's model, data and batch on the embedded SmolLM2-135M
    python bench/heap_kept.py --model tiny     # the test suite's 2-layer model (tests/test_resume.py's DPO)

Each variant trains the same fresh adapter on the same pairs for the same steps in its own process, through the
preference stage's library entry point (train_preference); the baseline is the same call with heap_kept replaced by a
no-op, i.e. what TRL and PyTorch do with glibc's defaults. Reported: seconds per step after the first, the process's
user and kernel (sys) CPU seconds, peak RSS, and the final train loss (the same in both: only the allocator differs).
Prints a table, writes JSON (--out).
"""

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
VARIANTS = {"glibc defaults": False, "kept heap (ours)": True}


def child(args) -> dict:
    import yaml
    from transformers import TrainerCallback

    import llm_engineering.training.preference as preference_training
    from llm_engineering.config import AdapterConfig, DataConfig, ModelConfig, PreferenceConfig, TrainConfig
    from llm_engineering.data.preference import PREFERENCE_ROWS
    from llm_engineering.data.prepare import prepare
    from llm_engineering.model.adapter import inject_adapter, save_adapter
    from llm_engineering.model.loading import load_model, load_tokenizer

    if not args.kept:
        preference_training.heap_kept = lambda on_cpu=True: contextlib.nullcontext()
    shipped = yaml.safe_load((ROOT / "configs" / "dpo.yaml").read_text())["parameters"]["config"]
    if args.model == "tiny":
        model_cfg = ModelConfig(source="local", name_or_path=args.model_dir, dtype="float32",
                                quantization={"method": "none"})
    else:
        model_cfg = ModelConfig(**shipped["model"])
    adapter_cfg = AdapterConfig(r=16, alpha=32, dropout=0.0, target_modules="all-linear")
    train_cfg = TrainConfig(**{**shipped["train"], "max_steps": args.steps, "eval_steps": args.steps,
                               "logging_steps": 1, "checkpoint_steps": None})
    pref = PreferenceConfig(method="dpo", beta=0.1, sft_loss_weight=shipped["preference"]["sft_loss_weight"])
    split = prepare(DataConfig(task="booking_preference", num_rows=8 * args.steps + 8, eval_rows=4),
                    load_tokenizer(model_cfg), train_cfg.max_length, PREFERENCE_ROWS)
    work = Path(tempfile.mkdtemp(prefix="heap-bench-"))
    save_adapter(inject_adapter(load_model(model_cfg), adapter_cfg)[0], work / "initial")

    class StepTimes(TrainerCallback):
        times: list = []

        def on_step_end(self, *_, **__):
            self.times.append(time.perf_counter())

    start = os.times()
    result = preference_training.train_preference(model_cfg, adapter_cfg, train_cfg, pref, work / "initial",
                                                  split.train.to_list(), split.eval.to_list(), work / "out",
                                                  callbacks=[StepTimes()])
    end = os.times()
    steps = StepTimes.times
    return {"s_per_step": (steps[-1] - steps[0]) / (len(steps) - 1), "user_s": end.user - start.user,
            "sys_s": end.system - start.system,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "final_loss": result.final_train_loss}


def tiny_model_dir() -> str:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from llm_engineering.model.embedded import embedded_model_dir
    from tests.conftest import TINY_LLAMA

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                         **TINY_LLAMA))
    path = tempfile.mkdtemp(prefix="tiny-llama-")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=["embedded", "tiny"], default="embedded")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "heap_kept.json"))
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--kept", action="store_true")
    parser.add_argument("--model-dir")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    model_dir = tiny_model_dir() if args.model == "tiny" else None
    rows = {}
    for name, kept in VARIANTS.items():
        cmd = [sys.executable, __file__, "--child", "--model", args.model, "--steps", str(args.steps)]
        cmd += ["--kept"] if kept else []
        cmd += ["--model-dir", model_dir] if model_dir else []
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
        rows[name] = json.loads(done.stdout.strip().splitlines()[-1])
    base = rows["glibc defaults"]["s_per_step"]
    print(f"DPO on the CPU ({args.model} model, configs/dpo.yaml's batch, {args.steps} steps; "
          f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {os.environ.get('OMP_NUM_THREADS', 'all')})")
    print(f"{'variant':<20} {'s/step':>7} {'speed-up':>8} {'user s':>7} {'sys s':>6} {'peak GiB':>8} {'loss':>8}")
    for name, row in rows.items():
        print(f"{name:<20} {row['s_per_step']:7.2f} {base / row['s_per_step']:8.2f} {row['user_s']:7.1f} "
              f"{row['sys_s']:6.1f} {row['peak_rss_gib']:8.2f} {row['final_loss'] or float('nan'):8.4f}")
    Path(args.out).write_text(json.dumps({"model": args.model, "steps": args.steps, "machine": platform.machine(),
                                          "cpus": os.cpu_count(), "variants": rows}, indent=2) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
