"""The SFT step's logic on this machine with configs/gpu_hub_model.yaml's settings, without zenml or mlflow (for a GPU
machine whose Python lacks them): adapter injection, training with mid-training evaluations and checkpoints, then
the merge with its fidelity check, on a random-init model of the Llama-3-8B width with a few layers.

    python bench/sft_logic_check.py [--layers 4] [--tokenizer-dir DIR]

Without CUDA, flex attention and compilation are switched off (flex has no CPU backward) and the model is tiny.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def main() -> None:
    from sft_speed import LLAMA3_8B, TINY, random_model_dir

    from llm_engineering.config import load_run_config
    from llm_engineering.data.prepare import prepare
    from llm_engineering.merge.merge_adapter import merge_adapter
    from llm_engineering.model.adapter import inject_adapter, save_adapter
    from llm_engineering.model.embedded import embedded_model_dir
    from llm_engineering.model.loading import load_model, load_tokenizer
    from llm_engineering.training.sft import train_adapter

    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--tokenizer-dir", help="default: the embedded model's")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    work = Path(tempfile.mkdtemp(prefix="sft-logic-"))
    shape = {**(LLAMA3_8B if cuda else TINY), "num_hidden_layers": args.layers}
    base = random_model_dir("check", work, Path(args.tokenizer_dir) if args.tokenizer_dir else embedded_model_dir(),
                            config=shape)

    tree = yaml.safe_load((ROOT / "configs" / "gpu_hub_model.yaml").read_text())["parameters"]["config"]
    tree["model"].update(source="local", name_or_path=str(base))
    if not cuda:
        tree["model"]["attn_implementation"], tree["train"]["compile"] = "sdpa", False
    tree["data"] = {"num_rows": 300, "eval_rows": 8}  # the synthetic task: no hub, no file
    tree["train"].update(max_steps=8, eval_steps=4, checkpoint_steps=4, gradient_accumulation_steps=1)
    cfg = load_run_config(tree)
    print(f"attention {cfg.model.attn_implementation}, packing {cfg.train.packing}, compile {cfg.train.compile}")

    data = prepare(cfg.data, load_tokenizer(cfg.model), cfg.train.max_length)
    peft_model, _ = inject_adapter(load_model(cfg.model), cfg.adapter)
    save_adapter(peft_model, work / "initial")
    del peft_model
    start = time.perf_counter()
    result = train_adapter(cfg.model, cfg.adapter, cfg.train, work / "initial", data.train, data.eval,
                           work / "trained", checkpoint_dir=work / "checkpoints")
    print(f"trained {result.steps} steps in {time.perf_counter() - start:.1f} s, {result.tokens_per_second:.0f} "
          f"tokens/s, peak {result.peak_memory_bytes / 2**30:.2f} GiB, eval loss {result.eval_loss:.4f}")
    print("evaluations (step, loss):", [(e["step"], round(e["eval_loss"], 4)) for e in result.log_history
                                        if "eval_loss" in e])
    print("checkpoints removed after training:", not (work / "checkpoints").exists())
    print("merge:", merge_adapter(cfg.model, cfg.merge, work / "trained", data.eval, work / "merged"))


if __name__ == "__main__":
    main()
