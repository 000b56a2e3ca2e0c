"""The dataset stage: read, normalise, validate, template, tokenize, mask and split, before any model loads.

Every row is checked; bad rows are reported with their location and reason. With `data.on_invalid: error` (default)
the run stops listing the first rows and the count; with `skip` it goes on and the report says how many rows were
dropped and why. Truncation is never silent either: it is a bad row unless `data.truncate` is set, and then counted.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from typing import Iterable

from llm_engineering.config import DataConfig
from llm_engineering.data.formats import FORMATS, RowProblem, detect_format, normalise, rename_columns
from llm_engineering.data.sources import DataError, load_raw
from llm_engineering.data.stats import length_stats
from llm_engineering.data.tokenization import IGNORE, tokenize_rows

MAX_REPORTED = 5


@dataclass
class DataReport:
    source: str
    format: str
    fingerprint: str
    rows_read: int
    rows_invalid: int
    rows_truncated: int
    train_rows: int = 0
    eval_rows: int = 0
    invalid_examples: list[str] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)

    def metadata(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "stats"} | self.stats


@dataclass(frozen=True)
class PreparedData:
    train: list[dict]  # normalised row + input_ids + labels
    eval: list[dict]
    report: DataReport


def prepare(cfg: DataConfig, tokenizer, max_length: int) -> PreparedData:
    raw = load_raw(cfg)
    if not raw.rows:
        raise DataError(f"{raw.source}: no rows")
    rows = [rename_columns(r, cfg.columns) for r in raw.rows]
    fmt = cfg.format if cfg.format != "auto" else detect_format(rows)
    if fmt is None:
        first = next((r for r in rows if isinstance(r, dict)), {})
        raise DataError(f"{raw.source}: cannot tell the dataset format from its columns {sorted(first)}; "
                        f"set data.format ({', '.join(FORMATS)}) and map columns with data.columns")

    problems: dict[int, str] = {}
    normalised: dict[int, dict] = {}
    for i, row in enumerate(rows):
        try:
            normalised[i] = normalise(row, fmt)
        except RowProblem as problem:
            problems[i] = str(problem)
    indices = sorted(normalised)
    tokenized = tokenize_rows([normalised[i] for i in indices], tokenizer, cfg.loss_on, max_length, cfg.truncate)
    kept = []
    for i, result in zip(indices, tokenized):
        if result.problem:
            problems[i] = result.problem
        else:
            kept.append({**normalised[i], "input_ids": result.input_ids, "labels": result.labels,
                         "truncated": result.truncated})

    listed = [f"{raw.locations[i]}: {problems[i]}" for i in sorted(problems)[:MAX_REPORTED]]
    if problems and (cfg.on_invalid == "error" or not kept):
        more = f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
        why = "" if kept else " (no valid row left to train on)"
        raise DataError(f"{raw.source}: {len(problems)} of {len(rows)} rows are invalid{why} (format {fmt}):\n  "
                        + "\n  ".join(listed) + more
                        + ("\n(set data.on_invalid: skip to train on the valid rows)" if kept else ""))

    truncated = sum(r.pop("truncated") for r in kept)
    train, held_out = split(kept, cfg)
    report = DataReport(
        source=raw.source, format=fmt, fingerprint=fingerprint(kept), rows_read=len(rows),
        rows_invalid=len(problems), rows_truncated=truncated, invalid_examples=listed,
        train_rows=len(train), eval_rows=len(held_out),
    )
    report.stats = (length_stats([len(r["input_ids"]) for r in train], "train")
                    | {"train_trained_tokens": sum(sum(t != IGNORE for t in r["labels"]) for r in train)})
    return PreparedData(train, held_out, report)


def split(rows: list[dict], cfg: DataConfig) -> tuple[list[dict], list[dict]]:
    """Seeded shuffle, optional cap, then the last `eval_rows` rows are held out."""
    shuffled = list(rows)
    random.Random(cfg.seed).shuffle(shuffled)
    if cfg.max_rows:
        shuffled = shuffled[: cfg.max_rows]
    if cfg.eval_rows >= len(shuffled):
        raise DataError(f"data.eval_rows={cfg.eval_rows} leaves no training rows out of {len(shuffled)}")
    return shuffled[: -cfg.eval_rows], shuffled[-cfg.eval_rows:]


def fingerprint(rows: Iterable[dict]) -> str:
    """SHA-256 over the rows as trained (content, token ids and masks), so any change to the data shows."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()
