"""Read raw rows from the synthetic task, local files (JSONL, JSON, CSV, Parquet, optionally .gz/.zst; a file, a
directory or a glob) or the hub, into a memory-mapped Arrow dataset.

Every source becomes the same two columns: `row`, the row as JSON text, and `location`, where a user finds it
("chat.jsonl line 12", "train.csv row 3"). Rows stay JSON text until formats.py normalises them, one row at a time:
Arrow would otherwise unify the rows' schemas (every message gets every key any message has, every tool schema the
properties of all the others), which silently changes tool definitions and chat rows. The rows are written to an
Arrow file in the datasets cache a batch at a time, so memory stays flat however many rows there are, and the file is
named by the files' content digest: an edited file is read again, an unchanged one is reused.

JSONL lines end at "\\n" only (U+2028/U+2029 inside strings are text); CSV is parsed by the csv module on the open
file, so quoted cells keep their newlines.
"""

from __future__ import annotations

import csv
import glob
import gzip
import hashlib
import io
import itertools
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

from llm_engineering.config import SourceConfig

FILE_TYPES = (".jsonl", ".json", ".csv", ".parquet")
COMPRESSIONS = (".gz", ".zst")
RAW_COLUMNS = ("row", "location")
RAW_BATCH_BYTES = 4 << 20  # of row text per record batch (see _raw_arrow)


class DataError(ValueError):
    """The dataset cannot be used; the message names the source, the rows and the reasons."""


@dataclass(frozen=True)
class RawRows:
    dataset: object  # datasets.Dataset with columns `row` (JSON text) and `location`
    source: str  # what to call the dataset in messages


def load_raw(src: SourceConfig, seed: int = 42, code_digest: str = "") -> RawRows:
    """The source's rows as Arrow (`row`, `location`); DataError for a missing, empty or unreadable source."""
    fingerprint, content = None, ""
    if src.source == "file":
        files = resolve_files(src.path)
        kwargs = {"paths": [str(f) for f in files]}
        content = files_digest(files)  # an edited file is another cache entry, whatever its name
        generator = _file_rows
    elif src.source == "synthetic":
        kwargs = {"num_rows": src.num_rows, "seed": seed, "task": src.task}
        generator = _synthetic_rows
    elif not src.streaming:
        return RawRows(_hub_dataset(src, code_digest), src.name)
    else:
        kwargs = {"hub": src.model_dump(mode="json")}
        generator = _hub_rows
        if src.hub_revision is None:  # the stream's head moves: read it again rather than reuse an old copy
            fingerprint = uuid.uuid4().hex
    # a changed reader (code_digest) is a different dataset
    key = fingerprint or hashlib.sha256(json.dumps([generator.__name__, kwargs, content, code_digest],
                                                   sort_keys=True).encode()).hexdigest()
    try:
        dataset = _raw_arrow(generator(**kwargs), key)
    except DataError:
        raise
    except Exception as exc:  # the hub and the file readers raise many types: name the source either way
        raise DataError(f"{src.name}: could not read the rows ({type(exc).__name__}: {exc})") from exc
    if len(dataset) == 0:
        raise DataError(f"{src.name}: no rows")
    return RawRows(dataset, src.name)


def peek_rows(src: SourceConfig, n: int = 100) -> list:
    """The first rows of a local file source, parsed (unparseable lines left out); [] when the files are not here
    (a remote step may read them where it runs)."""
    try:
        files = resolve_files(src.path)
    except DataError:
        return []
    rows = []
    for raw in itertools.islice(_file_rows([str(files[0])]), n):
        try:
            rows.append(json.loads(raw["row"]))
        except json.JSONDecodeError:
            continue
    return rows


def raw_features():
    from datasets import Features, Value

    return Features({"row": Value("string"), "location": Value("string")})


def read_path(path) -> RawRows:
    """A local file, directory or glob read as `data.path` reads it."""
    return load_raw(SourceConfig(source="file", path=str(path)))


def _raw_arrow(rows: Iterator[dict], key: str):
    """The rows written once to an Arrow file in the datasets cache named by `key`, then memory-mapped.

    Record batches are cut by size (RAW_BATCH_BYTES of row text), not by a row count: opening a mapped Arrow file
    reads every batch's header, and each read maps the pages around it (up to 64 KiB), so 1,000-row batches of
    1.6 KiB rows made the process's RSS grow by ~64 MiB per million rows (Dataset.from_generator's default)."""
    import pyarrow as pa
    from datasets import Dataset, config

    path = Path(config.HF_DATASETS_CACHE) / "llm_engineering_raw" / f"{key}.arrow"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")  # renamed when whole: never half a cache
        schema = raw_features().arrow_schema
        try:
            with pa.OSFile(str(partial), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
                for chunk in _batches_by_size(rows, RAW_BATCH_BYTES):
                    writer.write_batch(pa.record_batch([pa.array([r[c] for r in chunk], pa.string())
                                                        for c in RAW_COLUMNS], schema=schema))
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
    return Dataset.from_file(str(path))


def _batches_by_size(rows: Iterator[dict], limit: int) -> Iterator[list[dict]]:
    chunk, size = [], 0
    for row in rows:
        chunk.append(row)
        size += len(row["row"])
        if size >= limit:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def resolve_files(spec: str) -> list[Path]:
    """A file, every supported file of a directory, or every match of a glob, sorted by name."""
    path = Path(spec).expanduser()
    if any(ch in spec for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not files:
            raise DataError(f"{spec}: the pattern matches no file")
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and file_type(p) is not None)
        if not files:
            raise DataError(f"{path}: the directory has no {'/'.join(FILE_TYPES)} files "
                            f"(optionally {'/'.join(COMPRESSIONS)})")
    elif not path.is_file():
        raise DataError(f"dataset file not found: {path}")
    else:
        files = [path]
    for file in files:
        if file_type(file) is None:
            raise DataError(f"{file}: unsupported file type '{''.join(file.suffixes[-2:])}' (expected "
                            f"{', '.join(FILE_TYPES)}, optionally compressed {'/'.join(COMPRESSIONS)})")
    return files


def file_type(path: Path):
    """(kind, compression) for a supported file name, else None: chat.jsonl.zst -> (".jsonl", ".zst")."""
    suffixes = path.suffixes[-2:]
    compression = suffixes[-1] if suffixes and suffixes[-1] in COMPRESSIONS else ""
    kind = (suffixes[-2] if compression and len(suffixes) == 2 else "") if compression else path.suffix
    if kind not in FILE_TYPES or (compression and kind == ".parquet"):
        return None
    return kind, compression


def files_digest(files: list[Path]) -> str:
    """SHA-256 over each file's name, size and content: what an edit changes, whatever its mtime."""
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.resolve()}\0{file.stat().st_size}\0".encode())
        with open(file, "rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def inputs_digest(sources: list[SourceConfig]) -> str:
    """The content digest of every local file the sources read ("" when none): a cache key part for the step.
    A path missing here (data that only exists where the step runs, e.g. a mounted volume on a remote GPU) keys on
    its name; the dataset step names it if it is missing there too."""
    parts = []
    for src in sources:
        if src.source != "file":
            continue
        try:
            parts.append(files_digest(resolve_files(src.path)))
        except DataError as missing:
            parts.append(f"unreadable here: {missing}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest() if parts else ""


def _open_text(path: Path) -> IO[str]:
    kind, compression = file_type(path)
    if compression == ".gz":
        raw = gzip.open(path, "rb")
    elif compression == ".zst":
        import zstandard

        raw = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)
    else:
        raw = open(path, "rb")
    # newline="" keeps "\r\n" and lone "\r" for csv to handle; JSONL is split by us on "\n" only
    return io.TextIOWrapper(io.BufferedReader(raw) if compression == ".zst" else raw, encoding="utf-8", newline="")


def _file_rows(paths: list[str]) -> Iterator[dict]:
    for name in paths:
        path = Path(name)
        kind, _ = file_type(path)
        readers = {".jsonl": _jsonl_rows, ".json": _json_rows, ".csv": _csv_rows, ".parquet": _parquet_rows}
        count = 0
        try:
            for count, row in enumerate(readers[kind](path), start=1):
                yield row
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start} of a line or block)") from None
        except (OSError, EOFError) as exc:
            raise DataError(f"{path}: cannot be read ({type(exc).__name__}: {exc})") from None
        if count == 0:
            raise DataError(f"{path}: the file is empty")


def _jsonl_rows(path: Path) -> Iterator[dict]:
    with _open_text(path) as handle:
        line_number, pending = 0, ""
        for piece in handle:  # TextIOWrapper with newline="" splits after "\n", "\r\n" and "\r" only
            pending += piece
            if not pending.endswith("\n"):
                continue  # a lone "\r" inside a string: the line goes on
            line_number += 1
            if pending.strip():
                yield {"row": pending.rstrip("\r\n"), "location": f"{path.name} line {line_number}"}
            pending = ""
        if pending.strip():
            yield {"row": pending, "location": f"{path.name} line {line_number + 1}"}


def _json_rows(path: Path) -> Iterator[dict]:
    with _open_text(path) as handle:
        text = handle.read()
    if not text.strip():
        return
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON list of rows, found {type(rows).__name__}")
    if not rows:
        raise DataError(f"{path}: no rows (an empty JSON list)")
    for i, row in enumerate(rows):
        yield {"row": json.dumps(row, ensure_ascii=False), "location": f"{path.name} row {i}"}


def _csv_rows(path: Path) -> Iterator[dict]:
    with _open_text(path) as handle:
        for i, row in enumerate(csv.DictReader(handle)):
            if None in row:  # more cells than header columns
                raise DataError(f"{path}: row {i} has {len(row) - 1 + len(row[None])} cells, the header "
                                f"{len(row) - 1} columns")
            yield {"row": json.dumps(row, ensure_ascii=False), "location": f"{path.name} row {i}"}


def _parquet_rows(path: Path) -> Iterator[dict]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        index = 0
        for batch in parquet.iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                yield {"row": json.dumps(row, ensure_ascii=False, default=str), "location": f"{path.name} row {index}"}
                index += 1
    except DataError:
        raise
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ...: name the file either way
        raise DataError(f"{path}: not a readable Parquet file ({type(exc).__name__}: {exc})") from None


def _synthetic_rows(num_rows: int, seed: int, task: str = "booking") -> Iterator[dict]:
    from llm_engineering.data.synthetic import booking_preference_rows, booking_rows

    rows = booking_preference_rows(num_rows, seed) if task == "booking_preference" else booking_rows(num_rows, seed)
    for i, row in enumerate(rows):
        yield {"row": json.dumps(row, ensure_ascii=False), "location": f"row {i}"}


def _load_hub(src: SourceConfig):
    import datasets

    try:
        return datasets.load_dataset(src.hub_id, name=src.hub_config, split=src.hub_split,
                                     revision=src.hub_revision, streaming=src.streaming)
    except Exception as exc:  # the hub raises many types (offline, 404, gated); name the dataset either way
        raise DataError(
            f"could not load hub dataset '{src.hub_id}' (config={src.hub_config}, split={src.hub_split}, "
            f"revision={src.hub_revision}): {type(exc).__name__}: {exc}"
        ) from exc


def _hub_dataset(src: SourceConfig, code: str):
    """A downloaded hub split as raw rows. `datasets` resolves the revision on every load and fingerprints what it
    got, so the conversion is cached on that fingerprint: a new revision of the dataset is converted again."""
    from datasets.fingerprint import Hasher

    from llm_engineering.data.datasets_internals import fingerprint

    dataset = _load_hub(src)
    if len(dataset) == 0:
        raise DataError(f"{src.name}: no rows")
    split = src.hub_split
    return dataset.map(
        lambda batch, indices: {
            "row": [json.dumps(dict(zip(batch, values)), ensure_ascii=False, default=str)
                    for values in zip(*batch.values())],
            "location": [f"{split} row {i}" for i in indices],
        },
        batched=True, with_indices=True, remove_columns=dataset.column_names, features=raw_features(),
        new_fingerprint=Hasher.hash([fingerprint(dataset), split, code]), desc="hub rows",
    )


def _hub_rows(hub: dict) -> Iterator[dict]:
    src = SourceConfig(**hub)
    stream = _load_hub(src).take(src.max_rows)  # only these rows are downloaded
    for i, row in enumerate(stream):
        yield {"row": json.dumps(row, ensure_ascii=False, default=str), "location": f"{src.hub_split} row {i}"}


def environment_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
