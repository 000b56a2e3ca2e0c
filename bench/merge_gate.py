"""What the saved-dtype merge check measures, across models, prompt lengths and dtypes: a correct merge saved in
bf16 against a wrong one (one layer's update applied twice, or left out).

    python bench/merge_gate.py [--out bench/results/merge_gate.json]

For each model (the embedded SmolLM2-135M and each tiny family checkpoint of tests/model_families.py) a LoRA adapter
on every linear layer with trained-sized updates (B drawn at the scale a few hundred steps at lr 2e-3 reach) is merged
in fp32; the adapter model's next-token distributions are compared with the merged weights rounded to bf16 (what
ships), and with two broken merges (every update applied twice; decoder layer 0's updates left out). Per comparison: max |Δlogit|, mean and max per-token KL(adapter || merged) in nats,
and top-1 agreement, on the booking rows (~100 tokens) and the tool-call rows (~700 tokens). The gate must pass every
correct merge and refuse every broken one: the table shows which measure separates them, and by how much.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llm_engineering.merge.fidelity import logit_agreement, per_token_kl  # noqa: E402


def token_rows(model_dir: Path, sample: str, template: str) -> dict:
    """The sample file's first four rows as the data stage tokenizes them for this model, padded into one batch."""
    from llm_engineering.config import TokenizerConfig
    from llm_engineering.data.prepare import prepare_file
    from llm_engineering.model.loading import load_tokenizer, padding_side

    tokenizer = load_tokenizer(TokenizerConfig(source="local", name_or_path=str(model_dir), chat_template=template))
    ids = [row["input_ids"] for row in prepare_file(str(ROOT / "data" / "samples" / sample), tokenizer, 768)][:4]
    with padding_side(tokenizer, "right"):
        return tokenizer.pad({"input_ids": ids}, return_tensors="pt")


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits.float()


def adapter_model(model_dir: Path, scale: float):
    """The base in fp32 with a seeded LoRA adapter on every linear layer, B drawn at `scale`."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=scale)
    return model.eval()


def merged_as_saved(model_dir: Path, scale: float, variant: str):
    """The adapter merged in fp32 and rounded to bf16 (what ships); the broken variants are the merge bugs users
    report: every update applied twice (a second merge of a merged model), or one decoder layer's left out."""
    model = adapter_model(model_dir, scale)
    modules = [(n, m) for n, m in model.named_modules() if hasattr(m, "lora_B") and hasattr(m, "base_layer")]
    deltas = [(m.base_layer, m.get_delta_weight("default").detach().clone(), ".layers.0." in n) for n, m in modules]
    merged = model.merge_and_unload()
    with torch.no_grad():
        for layer, delta, first_layer in deltas:
            if variant == VARIANTS[1]:
                layer.weight += delta
            elif variant == VARIANTS[2] and first_layer:
                layer.weight -= delta
    return merged.to(torch.bfloat16).float()


VARIANTS = ("correct, saved bf16", "every update twice", "layer 0's updates left out")


def measure(model_dir: Path, label: str, samples: dict[str, tuple[str, str]], scale: float) -> list[dict]:
    """`samples`: rows kind -> (sample file, chat template)."""
    batches = {kind: token_rows(model_dir, *sample) for kind, sample in samples.items()}
    reference_model = adapter_model(model_dir, scale)
    references = {kind: logits(reference_model, batch) for kind, batch in batches.items()}
    del reference_model
    results = []
    for variant in VARIANTS:
        merged = merged_as_saved(model_dir, scale, variant)
        for kind, batch in batches.items():
            results.append(compare(label, kind, variant, references[kind], logits(merged, batch),
                                   batch["attention_mask"].bool()))
    return results


def compare(label, kind, variant, reference, other, mask) -> dict:
    max_diff, mean_diff, top1 = logit_agreement(reference, other, mask)
    kl = per_token_kl(reference, other, mask)  # the merge check's own measure (it gates on the mean)
    return {"model": label, "rows": kind, "merge": variant, "tokens": int(mask.sum()), "max_abs_logit_diff": max_diff,
            "mean_kl": kl.mean().item(), "max_kl": kl.max().item(), "top1_agreement": top1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/results/merge_gate.json")
    parser.add_argument("--scale", type=float, default=0.02, help="std of the LoRA B entries")
    args = parser.parse_args()
    from llm_engineering.model.embedded import embedded_model_dir
    from tests.model_families import FAMILIES, build_family_checkpoint

    samples = {"booking": ("messages.jsonl", "tokenizer"), "tools": ("tools_openai.jsonl", "chatml-tools")}
    results = measure(embedded_model_dir(), "SmolLM2-135M (embedded)", samples, args.scale)
    with tempfile.TemporaryDirectory() as scratch:
        for name, family in FAMILIES.items():
            directory = build_family_checkpoint(family, Path(scratch) / name)
            results += measure(directory, f"tiny {name}", {"booking": samples["booking"]}, args.scale)
    print(f"{'model':<26} {'rows':<8} {'merge':<28} {'tokens':>6} {'max|Δlogit|':>11} {'mean KL':>9} {'max KL':>9} "
          f"{'top-1':>6}")
    for r in results:
        print(f"{r['model']:<26} {r['rows']:<8} {r['merge']:<28} {r['tokens']:>6} {r['max_abs_logit_diff']:>11.3g} "
              f"{r['mean_kl']:>9.2e} {r['max_kl']:>9.2e} {r['top1_agreement']:>6.3f}")
    Path(args.out).write_text(json.dumps({"scale": args.scale, "results": results}, indent=2))


if __name__ == "__main__":
    main()
