"""Peak memory of merging a LoRA adapter: plain PEFT merge_and_unload vs our shard-by-shard streamed merge.

    python bench/merge_memory.py [--hidden 1024 --layers 24 --shard 200MB] [--out bench/results/merge_memory.json]

Builds a random-init Llama checkpoint in several safetensors shards (no downloads) and a random r=16 all-linear adapter,
then runs each merge in its own process (so peak RSS is its own) and checks the two results are bit-identical.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

TOKENIZER_FREE_CONFIG = dict(vocab_size=32000, tie_word_embeddings=True, max_position_embeddings=2048)


def build(root: Path, hidden: int, layers: int, shard: str) -> tuple[Path, Path]:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                         num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64, **TOKENIZER_FREE_CONFIG)
    model = LlamaForCausalLM(config)
    model.save_pretrained(root / "base", max_shard_size=shard)
    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.02)
    peft_model.save_pretrained(root / "adapter")
    return root / "base", root / "adapter"


def peak_rss_bytes() -> int:
    """VmHWM: this process's own high-water mark (ru_maxrss would carry the parent's over exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def run_merge(method: str, base: Path, adapter: Path, out: Path) -> None:
    """Child process: one merge, then print its peak RSS."""
    start = time.perf_counter()
    if method == "imports_only":  # the floor both merges stand on: python + torch + transformers + peft
        import peft  # noqa: F401
        import transformers  # noqa: F401

        import llm_engineering.merge.streamed  # noqa: F401
    elif method == "peft_merge_and_unload":
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter)
        model.merge_and_unload().save_pretrained(out, max_shard_size="200MB")
    else:
        from llm_engineering.config import MergeConfig, ModelConfig
        from llm_engineering.merge.streamed import streamed_merge

        cfg = ModelConfig(source="local", name_or_path=str(base), dtype="float32")
        streamed_merge(cfg, MergeConfig(base_weights="original", dtype="float32"), adapter, out)
    seconds = time.perf_counter() - start
    peak = peak_rss_bytes()
    print(json.dumps({"method": method, "peak_rss_bytes": peak, "seconds": seconds}))


def identical(a: Path, b: Path) -> bool:
    from safetensors.torch import load_file

    def tensors(directory):
        merged = {}
        for file in sorted(directory.glob("*.safetensors")):
            merged.update(load_file(file))
        return merged

    left, right = tensors(a), tensors(b)
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--shard", default="200MB")
    parser.add_argument("--out", type=Path, default=Path("bench/results/merge_memory.json"))
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_merge(args.child[0], *map(Path, args.child[1:]))
        return

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base, adapter = build(root, args.hidden, args.layers, args.shard)
        shard_sizes = [p.stat().st_size for p in sorted(base.glob("*.safetensors"))]
        results = []
        for method in ("imports_only", "peft_merge_and_unload", "streamed"):
            out = root / method
            done = subprocess.run([sys.executable, __file__, "--child", method, str(base), str(adapter), str(out)],
                                  capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
            if done.returncode != 0:
                sys.exit(done.stderr)
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        same = identical(root / "peft_merge_and_unload", root / "streamed")

    report = {
        "model": {"hidden": args.hidden, "layers": args.layers, "checkpoint_bytes": sum(shard_sizes),
                  "shards": len(shard_sizes), "largest_shard_bytes": max(shard_sizes)},
        "results": results,
        "bit_identical": same,
    }
    print(f"checkpoint: {sum(shard_sizes) / 2**30:.2f} GiB fp32 in {len(shard_sizes)} shards "
          f"(largest {report['model']['largest_shard_bytes'] / 2**20:.0f} MiB)")
    floor = results[0]["peak_rss_bytes"]
    print(f"{'method':<24}{'peak RSS (GiB)':>16}{'above imports (GiB)':>21}{'seconds':>10}")
    for r in results:
        r["above_imports_bytes"] = r["peak_rss_bytes"] - floor
        print(f"{r['method']:<24}{r['peak_rss_bytes'] / 2**30:>16.2f}{r['above_imports_bytes'] / 2**30:>21.2f}"
              f"{r['seconds']:>10.1f}")
    print(f"bit-identical merged weights: {same}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
