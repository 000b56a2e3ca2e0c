"""SFT speed, side by side: a plain TRL SFTTrainer script with library defaults vs our SFT step's training path.

    python bench/sft_speed.py                       # CPU profile: embedded SmolLM2-135M, configs/default.yaml
    python bench/sft_speed.py --levers              # ... plus one run per lever (ours with one setting changed)
    python bench/sft_speed.py --seeds 3             # each variant with 3 training seeds: held-out loss mean ± sd
    python bench/sft_speed.py --profile gpu         # random-init Llama-3-8B shape, QLoRA NF4, packed to 2048
    python bench/sft_speed.py --profile gpu --shape tiny   # the GPU profile's code path on a 2-layer model (CPU ok)

Same model, rows, LoRA config, optimizer steps, effective batch and hardware for every variant; each runs in its own
process (peak memory is its own). Reported per variant: non-padding training tokens/s and seconds/step after warm-up
steps, peak memory (max RSS on CPU; max allocated on CUDA, also split into the first step's and the later steps'),
model-FLOPs utilisation against the bf16 and fp32 matmul peaks this script measures first, and the mean train loss of
the last steps (speed must not come from learning less). MFU counts 4·N FLOPs per token (N: all parameters): LoRA
training runs the forward (2N) and the input-gradient backward (2N) of the frozen weights; their weight gradients are
never computed. Needs torch, transformers, peft, trl, accelerate, bitsandbytes and datasets, not zenml or mlflow.
Prints a table, writes JSON (--out).
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0)
TINY = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=49152, max_position_embeddings=4096)
# One setting changed from ours per lever: what each contributes (--levers)
LEVERS = {
    "ours: sdpa attention": {"model": {"attn_implementation": "sdpa"}},
    "ours: TRL's tiled fused LM-head loss": {"train": {"lm_head_loss": "trl_fused"}},
    "ours: gradient checkpointing": {"adapter": {"gradient_checkpointing": True}},
    "ours: packing": {"train": {"packing": True}},
    "ours: no quantization (bf16 weights)": {"model": {"quantization": {"method": "none"}}},
    "ours: PEFT's LoRA forward (no fused LoRA)": {"train": {"fused_lora": False}},
    "ours: bf16 adapter weights (TRL's QLoRA cast)": {"train": {"adapter_dtype": "bfloat16"}},
    "ours: regional torch.compile": {"train": {"compile": True}},
    # two settings: the LoRA-on-bf16 config at its fastest, against TRL's unquantized baseline at equal precision
    "ours: bf16 weights + regional torch.compile": {"model": {"quantization": {"method": "none"}},
                                                    "train": {"compile": True}},
}
PROFILED_STEPS = 2
GPU_LEVERS = {
    "ours: trained-positions LM-head loss": {"train": {"lm_head_loss": "trained_positions"}},
    "ours: no gradient checkpointing": {"adapter": {"gradient_checkpointing": False}},
    "ours: flex attention (varlen packing)": {"model": {"attn_implementation": "flex_attention"}},
    "ours: flex attention + regional torch.compile": {"model": {"attn_implementation": "flex_attention"},
                                                      "train": {"compile": True}},
    # where memory allows (an 80 GB GPU), no recompute: checkpointing only where memory needs it
    "ours: flex attention + regional torch.compile, no gradient checkpointing": {
        "model": {"attn_implementation": "flex_attention"}, "train": {"compile": True},
        "adapter": {"gradient_checkpointing": False}},
    "ours: PEFT's LoRA forward (no fused LoRA)": {"train": {"fused_lora": False}},
    "ours: bf16 adapter weights (TRL's QLoRA cast)": {"train": {"adapter_dtype": "bfloat16"}},
    "ours: regional torch.compile": {"train": {"compile": True}},
}


def run_config(profile: str, shape: str, model_dir: Path, overrides: dict, batch: int = 2, seed: int = 42):
    """The RunConfig both paths share, from configs/default.yaml (CPU) or the GPU profile's settings. `seed` sets the
    adapter's initialisation and the order of the rows (the rows themselves stay the same)."""
    from llm_engineering.config import load_run_config, load_run_config_file

    if profile == "cpu":
        tree = load_run_config_file(ROOT / "configs" / "default.yaml").model_dump(mode="json")
    else:
        tree = {"model": {"source": "local", "name_or_path": str(model_dir), "dtype": "bfloat16",
                          "quantization": {"method": "4bit", "compute_dtype": "bfloat16"}},
                # checkpointing on, as configs/gpu_hub_model.yaml ships it: without it the 8B shape needs 55 GiB
                "adapter": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear",
                            "gradient_checkpointing": True},
                "train": {"max_length": 2048, "packing": True, "per_device_batch_size": batch, "learning_rate": 2e-4},
                "data": {"num_rows": 4000 if shape == "8b" else 800, "eval_rows": 8}}
    tree["train"]["seed"] = tree["adapter"]["seed"] = seed
    for section, values in overrides.items():
        for key, value in values.items():
            if isinstance(value, dict):
                tree[section][key] = {**tree[section].get(key, {}), **value}
            else:
                tree[section][key] = value
    return load_run_config(tree)


def random_model_dir(shape: str, root: Path, tokenizer_dir: Path, config: Optional[dict] = None) -> Path:
    """A random-init Llama of the given shape (or `config`'s dimensions, named `shape`) saved as bf16 safetensors
    (no downloads), with a real tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    path = root / f"llama-{shape}"
    if (path / "config.json").is_file():
        return path
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(**(config or (LLAMA3_8B if shape == "8b" else TINY)), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=False, dtype="bfloat16")
    torch.set_default_dtype(torch.bfloat16)  # an 8B model initialised in fp32 would need 32 GB first
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # random init of 8B weights: seconds on a GPU
        model = LlamaForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    model.save_pretrained(path, max_shard_size="2GB")
    tokenizer.save_pretrained(path)
    del model
    if torch.cuda.is_available():  # the variants run in child processes: give them the whole GPU
        torch.cuda.empty_cache()
    return path


class Timer:
    """Times optimizer steps after `warmup` up to `last` and counts the non-padding tokens they trained on; also
    times the first step, which carries one-off costs (torch.compile's compilation) that the timed steps do not."""

    def __init__(self, warmup: int, last: int):
        from transformers import TrainerCallback

        timer = self

        class Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                timer.begin = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == 1:
                    timer.first_step = time.perf_counter() - timer.begin
                    if torch.cuda.is_available():  # compilation's one-off memory, apart from the steps' own
                        timer.first_step_peak = torch.cuda.max_memory_allocated() / 2**30
                        torch.cuda.reset_peak_memory_stats()
                if state.global_step == warmup:
                    timer.start, timer.tokens0 = time.perf_counter(), state.num_input_tokens_seen
                if state.global_step <= last:
                    timer.end, timer.tokens1 = time.perf_counter(), state.num_input_tokens_seen
                    timer.steps = state.global_step

        self.callback = Callback()

    def result(self, warmup: int, losses: list[float]) -> dict:
        seconds, tokens, steps = self.end - self.start, self.tokens1 - self.tokens0, self.steps - warmup
        return {"tokens_per_s": tokens / seconds, "s_per_step": seconds / steps, "timed_steps": steps,
                "first_step_s": self.first_step, "first_step_peak_gib": getattr(self, "first_step_peak", None),
                "final_loss": sum(losses[-3:]) / len(losses[-3:])}


def child(variant: str, args) -> dict:
    """Train one variant in this process and return its measurements."""
    from llm_engineering.data.prepare import prepare
    from llm_engineering.model.loading import check_attention_backend, load_model, load_tokenizer
    from llm_engineering.training.throughput import model_tflops, parameter_count

    overrides = (GPU_LEVERS if args.profile == "gpu" else LEVERS).get(variant, {})
    model_dir = Path(args.model_dir) if args.model_dir else None
    cfg = run_config(args.profile, args.shape, model_dir, overrides, args.batch, args.seed)
    check_attention_backend(cfg.model)  # as the pipeline does, before any weights load
    steps = args.warmup + args.steps + (PROFILED_STEPS + 1 if args.torch_profile else 0)  # profiled ones: untimed
    train_cfg = cfg.train.model_copy(update={"max_steps": steps, "logging_steps": 1, "eval_steps": 10**6,
                                             "checkpoint_steps": None})
    tokenizer = load_tokenizer(cfg.model)
    data = prepare(cfg.data, tokenizer, train_cfg.max_length)
    timer = Timer(args.warmup, args.warmup + args.steps)
    n_params = None
    with tempfile.TemporaryDirectory() as scratch:
        if variant == "TRL defaults":
            trainer = trl_defaults_trainer(cfg, train_cfg, data, scratch, timer.callback)
        else:
            from llm_engineering.model.adapter import inject_adapter
            from llm_engineering.training.sft import build_trainer

            model, _ = inject_adapter(load_model(cfg.model), cfg.adapter)
            trainer = build_trainer(model, tokenizer, cfg.model, cfg.adapter, train_cfg, data.train, data.eval,
                                    scratch, callbacks=[timer.callback])
        n_params = parameter_count(trainer.model.get_base_model().config)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        if args.torch_profile:
            profiled_train(trainer, cfg, train_cfg, args, variant)
        else:
            train(trainer, cfg, train_cfg)
        heldout = heldout_loss(trainer.model, data.eval)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    result = timer.result(args.warmup, losses)
    result["heldout_loss"] = heldout
    if torch.cuda.is_available():  # the steps after the first, and over the whole run
        result["steady_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        result["peak_memory_gib"] = max(result["steady_peak_gib"], result["first_step_peak_gib"])
    else:
        result["peak_memory_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    result["params"] = n_params
    result["model_tflop_per_s"] = model_tflops(result["tokens_per_s"], n_params)
    return result


@torch.no_grad()
def heldout_loss(model, rows: list[dict]) -> float:
    """Mean loss per trained token on held-out rows, with our masks for every variant (TRL's own masks also train
    the newline after <|im_end|>, an easy token that would flatter its train loss)."""
    model.eval()
    total, count = 0.0, 0
    device = next(model.parameters()).device
    for row in rows:
        ids = torch.tensor([row["input_ids"]], device=device)
        labels = torch.tensor([row["labels"]], device=device)
        logits = model(input_ids=ids).logits[0, :-1].float()
        target = labels[0, 1:]
        total += torch.nn.functional.cross_entropy(logits, target, reduction="sum").item()
        count += int((target != -100).sum())
    return total / count


def train(trainer, cfg, train_cfg) -> None:
    from llm_engineering.training.context import training_context

    if isinstance(trainer, PlainTRL):
        trainer.train()
    else:
        with training_context(trainer.model, train_cfg, cfg.model):
            trainer.train()


def profiled_train(trainer, cfg, train_cfg, args, variant: str) -> None:
    """Train under torch.profiler, recording the last steps (after the timed ones); writes the top operators."""
    from torch.profiler import ProfilerActivity, profile, schedule
    from transformers import TrainerCallback

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    total = args.warmup + args.steps
    with profile(activities=activities, schedule=schedule(wait=total, warmup=1, active=PROFILED_STEPS)) as prof:
        class Step(TrainerCallback):
            def on_step_end(self, *_, **__):
                prof.step()

        trainer.add_callback(Step())
        train(trainer, cfg, train_cfg)
    key = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    name = "".join(c if c.isalnum() else "_" for c in variant)
    out = Path(args.out).parent if args.out else ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"profile_{name}.txt").write_text(prof.key_averages().table(sort_by=key, row_limit=25))


class PlainTRL:
    """Marker base for the baseline trainer."""


def trl_defaults_trainer(cfg, train_cfg, data, output_dir, callback):
    """What a user writes with TRL's docs: from_pretrained (+ bitsandbytes for the GPU profile), a LoraConfig,
    SFTConfig defaults; TRL tokenizes the conversational prompt/completion rows itself. The training itself (steps,
    batch, learning rate and its schedule) is the same as ours."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, set_seed
    from trl import SFTConfig, SFTTrainer

    from llm_engineering.model.loading import checkpoint_location

    location = checkpoint_location(cfg.model)
    quantization = None
    if cfg.model.source == "local":  # GPU profile: QLoRA as TRL's docs show it
        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                          bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(location, quantization_config=quantization)
    rows = data.train
    dataset = Dataset.from_dict({"prompt": [r["messages"][:-1] for r in rows],
                                 "completion": [r["messages"][-1:] for r in rows]})
    batch = train_cfg.per_device_batch_size * (rows_per_sequence(data, train_cfg) if train_cfg.packing else 1)
    args = SFTConfig(output_dir=output_dir, max_steps=train_cfg.max_steps, per_device_train_batch_size=batch,
                     learning_rate=train_cfg.learning_rate, lr_scheduler_type=train_cfg.lr_scheduler,
                     warmup_steps=train_cfg.warmup_ratio, max_length=train_cfg.max_length, logging_steps=1,
                     use_cpu=not torch.cuda.is_available(), report_to=[], save_strategy="no", disable_tqdm=True,
                     include_num_input_tokens_seen="non_padding", seed=train_cfg.seed)
    adapter = LoraConfig(r=cfg.adapter.r, lora_alpha=cfg.adapter.alpha, lora_dropout=cfg.adapter.dropout,
                         target_modules=cfg.adapter.target_modules, task_type="CAUSAL_LM")
    trainer_class = type("PlainSFTTrainer", (SFTTrainer, PlainTRL), {})
    set_seed(train_cfg.seed)  # TRL initialises the LoRA weights before the Trainer seeds anything
    return trainer_class(model=model, args=args, train_dataset=dataset, peft_config=adapter,
                         processing_class=AutoTokenizer.from_pretrained(location), callbacks=[callback])


def rows_per_sequence(data, train_cfg) -> int:
    """How many rows one packed sequence holds on average: the baseline gets as many rows per step unpacked."""
    mean = sum(len(r["input_ids"]) for r in data.train) / len(data.train)
    return max(1, int(train_cfg.max_length // mean))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--shape", choices=["8b", "tiny"], default="8b", help="GPU profile model shape")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--levers", action="store_true", help="also run every lever")
    parser.add_argument("--lever", action="append", default=[], help="also run this lever (repeatable)")
    parser.add_argument("--batch", type=int, default=2, help="GPU profile: packed 2048-token sequences per step")
    parser.add_argument("--seeds", type=int, default=1, help="runs per variant, training seeds 42, 43, ...")
    parser.add_argument("--seed", type=int, default=42, help=argparse.SUPPRESS)  # one child's training seed
    parser.add_argument("--out")
    parser.add_argument("--torch-profile", action="store_true", help="also write each variant's top operators")
    parser.add_argument("--child")
    parser.add_argument("--model-dir")
    parser.add_argument("--tokenizer-dir", help="GPU profile: tokenizer for the random model (default: embedded)")
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args)), flush=True)
        return

    from llm_engineering.training.throughput import matmul_peak_gflops

    peaks = {"bf16": matmul_peak_gflops(torch.bfloat16), "fp32": matmul_peak_gflops(torch.float32)}
    levers = GPU_LEVERS if args.profile == "gpu" else LEVERS
    unknown = set(args.lever) - set(levers)
    if unknown:
        raise SystemExit(f"unknown lever(s) {sorted(unknown)}; there are: {list(levers)}")
    variants = ["TRL defaults", "ours"] + (list(levers) if args.levers else args.lever)

    extra = []
    with tempfile.TemporaryDirectory() as scratch:
        if args.profile == "gpu":
            from llm_engineering.model.embedded import embedded_model_dir

            tokenizer_dir = Path(args.tokenizer_dir) if args.tokenizer_dir else embedded_model_dir()
            extra = ["--model-dir", str(random_model_dir(args.shape, Path(scratch), tokenizer_dir))]
        results, failed = {}, {}
        for variant in variants:
            runs = []
            for seed in range(42, 42 + args.seeds):
                command = [sys.executable, __file__, "--child", variant, "--profile", args.profile, "--shape",
                           args.shape, "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch",
                           str(args.batch), "--seed", str(seed), *extra,
                           *(["--torch-profile"] if args.torch_profile else []),
                           *(["--out", args.out] if args.out else [])]
                done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
                line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if line is None:  # reported, and the other variants still run: a device hour is not lost to one
                    print(f"{variant} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}", file=sys.stderr)
                    failed[variant] = done.stderr[-4000:]
                    break
                runs.append({"seed": seed, **json.loads(line[len("RESULT "):])})
            if variant in failed:
                write_json(args, peaks, results, failed)
                continue
            results[variant] = summary(runs)
            results[variant]["mfu_bf16"] = results[variant]["model_tflop_per_s"] * 1e3 / peaks["bf16"]
            results[variant]["mfu_fp32"] = results[variant]["model_tflop_per_s"] * 1e3 / peaks["fp32"]
            print(f"  {variant}: {results[variant]['tokens_per_s']:.0f} tokens/s, "
                  f"{results[variant]['peak_memory_gib']:.1f} GiB", file=sys.stderr, flush=True)
            write_json(args, peaks, results, failed)  # so far: a run cut short keeps what it measured
    report(args, peaks, results, failed)
    if failed:  # the table and JSON keep what did run; the exit status still says that something did not
        raise SystemExit(f"failed: {', '.join(failed)}")


def summary(runs: list[dict]) -> dict:
    """One variant over its seeds: the mean of each measurement, the held-out loss's spread, and every run."""
    if len(runs) == 1:
        return runs[0]
    means = {key: statistics.fmean(run[key] for run in runs) for key, value in runs[0].items()
             if isinstance(value, (int, float)) and key != "seed"}
    means["peak_memory_gib"] = max(run["peak_memory_gib"] for run in runs)
    return {**means, "heldout_loss_sd": statistics.stdev(run["heldout_loss"] for run in runs), "runs": runs}


def report(args, peaks: dict, results: dict, failed: dict) -> None:
    base = results["TRL defaults"]["tokens_per_s"] if "TRL defaults" in results else float("nan")
    print(f"\nSFT speed, {args.profile} profile ({platform.processor() or platform.machine()}, "
          f"{torch.cuda.get_device_name() if torch.cuda.is_available() else f'{os.cpu_count()} CPUs'}); "
          f"measured matmul peak: bf16 {peaks['bf16']:.0f} GFLOP/s, fp32 {peaks['fp32']:.0f} GFLOP/s")
    header = (f"{'variant':<40}{'tok/s':>8}{'x TRL':>7}{'s/step':>8}{'1st step':>9}{'peak GiB':>9}{'steps GiB':>10}"
              f"{'1st GiB':>8}{'MFU bf16':>9}{'MFU fp32':>9}{'train loss':>11}{'held-out':>9}")
    print(header + "\n" + "-" * len(header))
    for name, r in results.items():
        print(f"{name:<40}{r['tokens_per_s']:>8.0f}{r['tokens_per_s'] / base:>7.2f}{r['s_per_step']:>8.2f}"
              f"{r['first_step_s']:>9.1f}{r['peak_memory_gib']:>9.2f}"
              f"{gib(r, 'steady_peak_gib'):>10}{gib(r, 'first_step_peak_gib'):>8}"
              f"{r['mfu_bf16']:>9.1%}{r['mfu_fp32']:>9.1%}"
              f"{r['final_loss']:>11.4f}"
              f"{r['heldout_loss']:>9.4f}" + (f" ± {r['heldout_loss_sd']:.4f}" if "heldout_loss_sd" in r else ""))
    for name in failed:
        print(f"{name:<40}failed (its error is in the JSON)")
    print(f"\nwritten: {write_json(args, peaks, results, failed)}")


def gib(result: dict, key: str) -> str:
    """On CUDA the peak splits into the first step's (compilation's one-off memory) and the later steps'; '-' on CPU,
    where the peak RSS cannot be reset between them."""
    value = result.get(key)
    return "-" if value is None else f"{value:.2f}"


def write_json(args, peaks: dict, results: dict, failed: dict) -> Path:
    out = Path(args.out or ROOT / "bench" / "results" / f"sft_speed_{args.profile}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or platform.machine()
    out.write_text(json.dumps({"profile": args.profile, "shape": args.shape, "steps": args.steps, "device": device,
                               "batch": args.batch, "seeds": args.seeds,
                               "warmup": args.warmup, "peaks_gflops": peaks, "results": results,
                               **({"failed": failed} if failed else {})}, indent=2))
    return out


if __name__ == "__main__":
    main()
