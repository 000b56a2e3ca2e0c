"""Dataset-stage throughput and padding: our batched templating + masking vs per-row `apply_chat_template`.

    python bench/data_pipeline.py [--rows 100000] [--batch-size 8] [--out bench/results/data_pipeline.json]

(1) rows/s of `prepare` (generate, normalise, validate, template, tokenize with the fast tokenizer in one batched
call, mask, split) on N synthetic rows, next to the obvious per-row baseline: `tokenizer.apply_chat_template(messages,
tokenize=True)` for every row, which masks nothing. (2) The share of padding in training batches of the default
dataset, without packing and with TRL's best-fit packing into max_length sequences.
"""

import argparse
import json
import platform
import time
from pathlib import Path

import yaml


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--out", default="bench/results/data_pipeline.json")
    args = parser.parse_args()

    from datasets import Dataset
    from trl import pack_dataset

    from llm_engineering.config import DataConfig, load_run_config_file
    from llm_engineering.data.prepare import prepare
    from llm_engineering.data.stats import padding_fraction
    from llm_engineering.data.synthetic import booking_rows
    from llm_engineering.model.loading import load_tokenizer

    run = load_run_config_file(args.config)
    tokenizer = load_tokenizer(run.model)
    big = DataConfig(num_rows=args.rows, eval_rows=100)

    start = time.perf_counter()
    rows = booking_rows(args.rows, 42)
    baseline = [tokenizer.apply_chat_template(r["messages"], tokenize=True) for r in rows]
    baseline_s = time.perf_counter() - start
    start = time.perf_counter()
    ours = prepare(big, tokenizer, run.train.max_length)
    ours_s = time.perf_counter() - start
    assert len(ours.train) + len(ours.eval) == len(baseline)

    default = prepare(run.data, tokenizer, run.train.max_length)
    lengths = [len(r["input_ids"]) for r in default.train]
    packed = pack_dataset(Dataset.from_dict({"input_ids": [r["input_ids"] for r in default.train]}),
                          run.train.max_length, strategy="bfd")
    packed_lengths = [len(ids) for ids in packed["input_ids"]]

    result = {
        "machine": platform.processor() or platform.machine(),
        "rows": args.rows,
        "baseline_per_row_apply_chat_template": {"seconds": round(baseline_s, 2), "rows_per_s": round(args.rows / baseline_s)},
        "ours_prepare_batched_with_masks": {"seconds": round(ours_s, 2), "rows_per_s": round(args.rows / ours_s)},
        "default_dataset": {
            "config": args.config, "train_rows": len(lengths), "batch_size": args.batch_size,
            "max_length": run.train.max_length, "tokens_mean": round(sum(lengths) / len(lengths), 1),
            "padding_fraction_unpacked": round(padding_fraction(lengths, args.batch_size), 4),
            "packed_sequences": len(packed_lengths),
            "padding_fraction_packed": round(padding_fraction(packed_lengths, args.batch_size), 4),
        },
    }
    print(f"{'path':<42}{'seconds':>10}{'rows/s':>10}")
    for name in ("baseline_per_row_apply_chat_template", "ours_prepare_batched_with_masks"):
        print(f"{name:<42}{result[name]['seconds']:>10}{result[name]['rows_per_s']:>10}")
    print(yaml.safe_dump({"default_dataset": result["default_dataset"]}, sort_keys=False))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
