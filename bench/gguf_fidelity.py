"""GGUF fidelity and cost of an export: writes model-<type>.gguf of an exported model with the export step's own code,
reloads each with transformers' GGUF loader, and compares its logits with the exported safetensors model's on eval
prompts; prints a table and writes JSON.

    python bench/gguf_fidelity.py outputs/smollm2-booking [--rows data/samples/booking_unseen.jsonl] [--prompts 16]
                                  [--types f16 q8_0] [--out bench/results/gguf_fidelity.json]

The pipeline checks the first `export.verify_prompts` eval rows (4 by default); this measures more of them. Run it
alone on the machine.
"""

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llm_engineering.data.formats import chat_messages  # noqa: E402
from llm_engineering.export.export_dir import load_exported  # noqa: E402
from llm_engineering.export.gguf_file import CHECKS, GGUFError, verify_gguf, write_gguf  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("--rows", type=Path, default=ROOT / "data" / "samples" / "booking_unseen.jsonl")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--types", nargs="+", default=["f16", "q8_0"])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gguf_fidelity.json")
    args = parser.parse_args(argv)

    model, tokenizer = load_exported(args.export_dir)
    rows = [json.loads(line) for line in args.rows.read_text().splitlines() if line.strip()][: args.prompts]
    texts = [tokenizer.apply_chat_template(chat_messages(r["messages"]), tokenize=False) for r in rows]
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        for gguf_type in args.types:
            start = time.perf_counter()
            path = write_gguf(model, tokenizer, args.export_dir, Path(scratch) / f"model-{gguf_type}.gguf",
                              gguf_type, args.export_dir.name)
            written = time.perf_counter() - start
            try:
                report, passed = verify_gguf(path, model, tokenizer, texts, gguf_type), True
                figures = report.__dict__
            except GGUFError as exc:
                figures, passed = {"gguf_type": gguf_type, "error": str(exc)}, False
            results.append({**figures, "passed": passed, "write_seconds": round(written, 1),
                            "check_seconds": round(time.perf_counter() - start - written, 1),
                            "threshold_max_abs_logit_diff": CHECKS[gguf_type][0],
                            "threshold_top1_agreement": CHECKS[gguf_type][1]})
            path.unlink()

    # checked: against what the gate compares (f16: the merged weights rounded to f16); merged: the merged model
    print(f"{'type':6} {'MiB':>7} {'checked max|Δ|':>15} {'top-1':>7} {'merged max|Δ|':>14} {'top-1':>7} "
          f"{'ids =':>6} {'write s':>8} {'check s':>8}  pass")
    nan = float("nan")
    for r in results:
        print(f"{r['gguf_type']:6} {r.get('bytes', 0) / 2**20:7.1f} {r.get('max_abs_logit_diff', nan):15.4f} "
              f"{r.get('top1_agreement', nan):7.4f} {r.get('merged_max_abs_logit_diff', nan):14.4f} "
              f"{r.get('merged_top1_agreement', nan):7.4f} {str(r.get('tokenizer_ids_equal', '-')):>6} "
              f"{r['write_seconds']:8.1f} {r['check_seconds']:8.1f}  {r['passed']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"export_dir": str(args.export_dir), "prompts": len(texts),
                                    "tokens_compared": "all non-pad positions of each prompt",
                                    "machine": platform.processor() or platform.machine(), "results": results},
                                   indent=2))
    print(f"wrote {args.out}")
    return 0 if all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
