"""Load training rows from the synthetic task, a local JSON/JSONL file or a Hugging Face hub dataset.

Every source is normalised to rows of `{"messages": [{"role", "content"}, ...]}` and validated row by row before
anything heavy happens. For training, a row becomes TRL's conversational prompt/completion pair: the last assistant
turn is the completion (trained, with its end-of-turn token), everything before it is the prompt (context only).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from llm_engineering.config import DataConfig
from llm_engineering.data.synthetic import booking_rows

ROLES = {"system", "user", "assistant"}
MAX_REPORTED = 5


class DataError(ValueError):
    """The dataset cannot be used; the message names the source, the rows and the reasons."""


@dataclass(frozen=True)
class SplitRows:
    train: list[dict]
    eval: list[dict]
    fingerprint: str


def load_rows(cfg: DataConfig) -> list[dict]:
    if cfg.source == "synthetic":
        return booking_rows(cfg.num_rows, cfg.seed)
    if cfg.source == "file":
        return read_rows_file(Path(cfg.path))
    return read_hub_rows(cfg)


def read_rows_file(path: Path) -> list[dict]:
    """A `.jsonl` file (one row per line) or a `.json` file holding a list of rows."""
    if not path.is_file():
        raise DataError(f"dataset file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not text.strip():
        raise DataError(f"{path}: the file is empty")
    if path.suffix == ".json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
        if not isinstance(rows, list):
            raise DataError(f"{path}: expected a JSON list of rows, found {type(rows).__name__}")
        return rows
    if path.suffix != ".jsonl":
        raise DataError(f"{path}: unsupported file type '{path.suffix}' (expected .jsonl or .json)")
    rows = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {line_number} is not valid JSON: {exc.msg}") from None
    return rows


def read_hub_rows(cfg: DataConfig) -> list[dict]:
    import datasets

    try:
        dataset = datasets.load_dataset(
            cfg.hub_id, name=cfg.hub_config, split=cfg.hub_split, revision=cfg.hub_revision
        )
    except Exception as exc:  # the hub raises many types (offline, 404, gated); name the dataset either way
        raise DataError(
            f"could not load hub dataset '{cfg.hub_id}' (config={cfg.hub_config}, split={cfg.hub_split}, "
            f"revision={cfg.hub_revision}): {type(exc).__name__}: {exc}"
        ) from exc
    if "messages" not in dataset.column_names:
        raise DataError(f"hub dataset '{cfg.hub_id}' has no 'messages' column (columns: {dataset.column_names})")
    return [{"messages": row} for row in dataset["messages"]]


def row_problem(row: Any) -> str | None:
    """Why a row cannot be trained on, or None if it can."""
    if not isinstance(row, dict):
        return f"expected an object, found {type(row).__name__}"
    messages = row.get("messages")
    if not isinstance(messages, list):
        return "missing 'messages' list"
    if not messages:
        return "'messages' is empty"
    for turn, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"message {turn} is not an object"
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or role not in ROLES:
            return f"message {turn} has unknown role {role!r} (allowed: {sorted(ROLES)})"
        if not isinstance(content, str):
            return f"message {turn} content is {type(content).__name__}, not a string"
        if not content.strip():
            return f"message {turn} has empty content"
    if messages[-1]["role"] != "assistant":
        return "the last message is not from the assistant (nothing to learn)"
    return None


def validate_rows(rows: list[Any], source: str) -> list[dict]:
    problems = [(i, p) for i, row in enumerate(rows) if (p := row_problem(row)) is not None]
    if problems:
        listed = "\n".join(f"  row {i}: {p}" for i, p in problems[:MAX_REPORTED])
        more = f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
        raise DataError(f"{source}: {len(problems)} of {len(rows)} rows are invalid:\n{listed}{more}")
    if not rows:
        raise DataError(f"{source}: no rows")
    return [{"messages": [{"role": m["role"], "content": m["content"]} for m in r["messages"]]} for r in rows]


def fingerprint(rows: Iterable[dict]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def split_rows(rows: list[dict], cfg: DataConfig) -> SplitRows:
    """Seeded shuffle, optional cap, then the last `eval_rows` rows are held out."""
    shuffled = list(rows)
    random.Random(cfg.seed).shuffle(shuffled)
    if cfg.max_rows:
        shuffled = shuffled[: cfg.max_rows]
    if cfg.eval_rows >= len(shuffled):
        raise DataError(f"data.eval_rows={cfg.eval_rows} leaves no training rows out of {len(shuffled)}")
    return SplitRows(train=shuffled[: -cfg.eval_rows], eval=shuffled[-cfg.eval_rows:], fingerprint=fingerprint(rows))


def load_split(cfg: DataConfig) -> SplitRows:
    source = {"synthetic": "synthetic task", "file": str(cfg.path), "hub": f"hub:{cfg.hub_id}"}[cfg.source]
    return split_rows(validate_rows(load_rows(cfg), source), cfg)


def to_prompt_completion(rows: list[dict]) -> dict[str, list]:
    """Columns for TRL's conversational prompt/completion format (trains the final assistant turn only)."""
    return {
        "prompt": [r["messages"][:-1] for r in rows],
        "completion": [r["messages"][-1:] for r in rows],
    }
