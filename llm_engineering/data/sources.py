"""Read raw rows from the synthetic task, local files (JSONL, JSON, CSV, Parquet, or a directory of them) or the hub.

Rows come back as they are in the source, each with a location a user can find it by ("chat.jsonl line 12",
"train.csv row 3"); formats.py normalises and checks them.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_engineering.config import DataConfig
from llm_engineering.data.synthetic import booking_rows

FILE_TYPES = (".jsonl", ".json", ".csv", ".parquet")


class DataError(ValueError):
    """The dataset cannot be used; the message names the source, the rows and the reasons."""


@dataclass(frozen=True)
class RawRows:
    rows: list[Any]
    locations: list[str]
    source: str  # what to call the dataset in messages


def load_raw(cfg: DataConfig) -> RawRows:
    if cfg.source == "synthetic":
        rows = booking_rows(cfg.num_rows, cfg.seed)
        return RawRows(rows, [f"row {i}" for i in range(len(rows))], "synthetic task")
    if cfg.source == "file":
        return read_path(Path(cfg.path).expanduser())
    return read_hub(cfg)


def read_path(path: Path) -> RawRows:
    """One supported file, or every supported file of a directory (sorted by name, concatenated)."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in FILE_TYPES and p.is_file())
        if not files:
            raise DataError(f"{path}: the directory has no {'/'.join(FILE_TYPES)} files")
        parts = [read_file(f) for f in files]
        return RawRows([r for p in parts for r in p.rows], [loc for p in parts for loc in p.locations], str(path))
    return read_file(path)


def read_file(path: Path) -> RawRows:
    if not path.is_file():
        raise DataError(f"dataset file not found: {path}")
    if path.suffix not in FILE_TYPES:
        raise DataError(f"{path}: unsupported file type '{path.suffix}' (expected {', '.join(FILE_TYPES)})")
    if path.suffix == ".parquet":
        rows = _parquet_rows(path)
        return RawRows(rows, [f"{path.name} row {i}" for i in range(len(rows))], str(path))
    text = _text(path)
    if path.suffix == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        return RawRows(rows, [f"{path.name} row {i}" for i in range(len(rows))], str(path))
    if path.suffix == ".json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
        if not isinstance(rows, list):
            raise DataError(f"{path}: expected a JSON list of rows, found {type(rows).__name__}")
        return RawRows(rows, [f"{path.name} row {i}" for i in range(len(rows))], str(path))
    rows, locations = [], []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {line_number} is not valid JSON: {exc.msg}") from None
        locations.append(f"{path.name} line {line_number}")
    return RawRows(rows, locations, str(path))


def _text(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not text.strip():
        raise DataError(f"{path}: the file is empty")
    return text


def _parquet_rows(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ...: name the file either way
        raise DataError(f"{path}: not a readable Parquet file ({type(exc).__name__}: {exc})") from None


def read_hub(cfg: DataConfig) -> RawRows:
    import datasets

    name = f"hub:{cfg.hub_id}"
    try:
        dataset = datasets.load_dataset(
            cfg.hub_id, name=cfg.hub_config, split=cfg.hub_split, revision=cfg.hub_revision
        )
    except Exception as exc:  # the hub raises many types (offline, 404, gated); name the dataset either way
        raise DataError(
            f"could not load hub dataset '{cfg.hub_id}' (config={cfg.hub_config}, split={cfg.hub_split}, "
            f"revision={cfg.hub_revision}): {type(exc).__name__}: {exc}"
        ) from exc
    rows = dataset.to_list()
    return RawRows(rows, [f"{cfg.hub_split} row {i}" for i in range(len(rows))], name)
