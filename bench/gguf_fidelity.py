"""GGUF fidelity and cost, through the export step's own code: llama.cpp's converter and quantizer make each type of
a merged model, llama.cpp runs it, and its logits on eval prompts are compared with the model's; prints a table and
writes JSON (the figures the export gates on: gguf_file.MIN_TOP1 and MAX_KL).

    python bench/gguf_fidelity.py outputs/smollm2-booking [more model dirs] [--families] [--prompts 16]
                                  [--types f16 q8_0 q4_k_m q5_k_m q6_k] [--out bench/results/gguf_fidelity.json]

`--families` adds the test suite's tiny random checkpoint of each model family (tests/model_families.py). Run it alone
on the machine: the seconds are wall time.
"""

import argparse
import json
import platform
import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llm_engineering.data.templates import row_text  # noqa: E402
from llm_engineering.export.export_dir import load_exported  # noqa: E402
from llm_engineering.model.loading import save_tokenizer  # noqa: E402
from llm_engineering.export.gguf_file import MAX_KL, MIN_TOP1, GGUFError, gate, write_gguf_files  # noqa: E402


def measure(model_dir: Path, label: str, rows: list[dict], types: list[str]) -> list[dict]:
    model, tokenizer = load_exported(model_dir)
    texts = [row_text(tokenizer, r) for r in rows]
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = Path(scratch) / "model"
        shutil.copytree(model_dir, checkpoint, ignore=shutil.ignore_patterns("*.gguf", "adapter"))
        save_tokenizer(tokenizer, checkpoint)  # as the export step writes it
        try:
            reports = write_gguf_files(model, tokenizer, checkpoint, types, rows, texts, enforce=False)
        except GGUFError as exc:
            return [{"model": label, "refused": str(exc)}]
    return [{"model": label, **asdict(r), "passed": not gate(r), "problems": gate(r)} for r in reports]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dirs", type=Path, nargs="*")
    parser.add_argument("--families", action="store_true")
    parser.add_argument("--rows", type=Path, default=ROOT / "data" / "samples" / "booking_unseen.jsonl")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--types", nargs="+", default=["f16", "q8_0", "q4_k_m", "q5_k_m", "q6_k"])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gguf_fidelity.json")
    args = parser.parse_args(argv)

    rows = [json.loads(line) for line in args.rows.read_text().splitlines() if line.strip()][: args.prompts]
    results = [r for d in args.model_dirs for r in measure(d, d.name, rows, args.types)]
    if args.families:
        from tests.model_families import FAMILIES, build_family_checkpoint

        with tempfile.TemporaryDirectory() as scratch:
            for name, family in FAMILIES.items():
                results += measure(build_family_checkpoint(family, Path(scratch) / name), name, rows, args.types)

    print(f"{'model':22} {'type':7} {'MiB':>7} {'top-1':>7} {'min':>5} {'mean KL':>9} {'max':>6} {'max|Δ|':>7} "
          f"{'ids =':>6} {'stops':>6} {'s':>6}  pass")
    for r in results:
        if "refused" in r:
            print(f"{r['model']:22} refused: {r['refused']}")
            continue
        t = r["gguf_type"]
        print(f"{r['model']:22} {t:7} {r['bytes'] / 2**20:7.1f} {r['top1_agreement']:7.4f} {MIN_TOP1[t]:5.2f} "
              f"{r['mean_kl']:9.2e} {MAX_KL[t]:6.0e} {r['max_abs_logit_diff']:7.3f} "
              f"{str(r['tokenizer_ids_equal']):>6} {str(r['answer_stops']) + '/' + str(r['merged_answer_stops'])[0]:>6} "
              f"{r['seconds']:6.1f}  {r['passed']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": "python bench/gguf_fidelity.py " + " ".join(argv or sys.argv[1:]),
                                    "prompts": len(rows), "machine": platform.processor() or platform.machine(),
                                    "floors": {"min_top1": MIN_TOP1, "max_kl": MAX_KL}, "results": results},
                                   indent=2))
    print(f"wrote {args.out}")
    return 0 if all(r.get("passed") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
