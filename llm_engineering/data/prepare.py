"""The dataset stage: read, normalise, validate, template, tokenize, mask, dedupe, mix and split, before any model loads.

Rows stay in memory-mapped Arrow from the file read to the step's outputs: one batched `Dataset.map` (over
`data.num_proc` processes) parses, normalises, templates, tokenizes and masks every row, writing to the datasets cache
under a fingerprint of its inputs (rows, format, tokenizer and template, settings, library code), so a rerun with the
same inputs reuses the work. Everything after it (problems, duplicates, splits, mixture weights, fingerprints, length
statistics) works on index arrays and numeric columns, never on Python copies of the rows.

Every row is checked; bad rows are reported with their location and reason. With `data.on_invalid: error` (default)
the run stops listing the first rows and the count; with `skip` it goes on and the report says how many rows were
dropped and why. Truncation is never silent either: it is a bad row unless `data.truncate` is set, and then counted.
Exact duplicates and rows in both train and eval are counted (a warning for the overlap); `data.dedupe` drops them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from llm_engineering.codebase import library_digest
from llm_engineering.config import DataConfig, SourceConfig
from llm_engineering.console import datasets_bar
from llm_engineering.data.datasets_internals import arrow_writer, indexed_view, indices
from llm_engineering.data.datasets_internals import fingerprint as dataset_fingerprint
from llm_engineering.data.formats import FORMATS, RowProblem, detect_format, normalise, rename_columns
from llm_engineering.data.sources import DataError, environment_cores, load_raw
from llm_engineering.data.stats import length_stats
from llm_engineering.data.tokenization import IGNORE, tokenize_rows

logger = logging.getLogger(__name__)
MAX_REPORTED = 5
MAP_BATCH_ROWS = 4000  # rows per map call and per record batch of the processed files (see _process_in_chunks)
PROCESS_ROWS = 1000  # rows in Python objects at once
ROWS_PER_PROCESS = 10_000  # below this a worker pool costs more than it saves
INTERNAL_COLUMNS = ["problem", "row_hash", "truncated", "trained_tokens", "length"]


@dataclass
class DataReport:
    source: str
    format: str
    fingerprint: str  # of the training split as trained (content, token ids, masks, order)
    rows_read: int
    rows_invalid: int
    rows_truncated: int
    train_rows: int = 0
    eval_rows: int = 0
    eval_fingerprint: str = ""
    duplicate_rows: int = 0  # rows identical to an earlier row (across sources)
    train_eval_overlap: int = 0  # eval rows also in train
    rows_deduped: int = 0
    invalid_examples: list[str] = field(default_factory=list)
    sources: list[dict] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)

    def metadata(self) -> dict:
        flat = {k: v for k, v in self.__dict__.items() if k not in ("stats", "sources")} | self.stats
        for i, src in enumerate(self.sources if len(self.sources) > 1 else []):
            flat.update({f"source_{i}_{k}": v for k, v in src.items()})
        return flat


@dataclass(frozen=True)
class PreparedData:
    train: Any  # datasets.Dataset: normalised row + input_ids + labels (+ location)
    eval: Any
    report: DataReport
    train_lengths: np.ndarray  # tokens per training row, for the histogram


@dataclass
class _Columns:
    """The per-row numbers everything after the map works on, read once from the processed rows."""

    row_hash: np.ndarray
    length: np.ndarray
    trained_tokens: np.ndarray
    truncated: np.ndarray
    bad: np.ndarray  # True where the row has a problem
    unused: set[str]  # optional columns no row uses (text/tools all null, messages all empty)


@dataclass
class _Source:
    cfg: SourceConfig
    dataset: Any  # processed rows, bad ones included
    good: np.ndarray  # indices of the usable rows
    report: dict
    columns: _Columns


@dataclass(frozen=True)
class RowKind:
    """What rows a pipeline trains on: the formats it reads, how one is detected, how a batch is processed."""

    name: str
    formats: tuple[str, ...]
    detect: Callable[[dict], Optional[str]]
    process: Callable[..., dict]  # a batch of JSON rows -> processed columns, a `problem` for each bad row
    features: Callable[[], Any]  # the processed rows' datasets.Features


def prepare(cfg: DataConfig, tokenizer, max_length: int, kind: Optional[RowKind] = None) -> PreparedData:
    from datasets import concatenate_datasets

    kind = kind or SFT_ROWS
    sources = [_prepare_source(src, cfg, tokenizer, max_length, kind) for src in cfg.source_list()]
    rng = np.random.default_rng(cfg.seed)
    offsets = np.cumsum([0] + [len(s.dataset) for s in sources])
    index_type = np.int32 if offsets[-1] < 2**31 else np.int64  # half the memory of int64 per row index
    hashes = _joined([s.columns.row_hash for s in sources])  # per-row arrays: a million rows are ~8 MiB each
    origin, pool = [], []
    for i, s in enumerate(sources):  # each source shuffled and capped on its own
        chosen = rng.permutation(s.good)[: s.cfg.max_rows].astype(index_type, copy=False)
        chosen += int(offsets[i])
        pool.append(chosen)
        origin.append(np.full(len(chosen), i, dtype=np.int16))
    pool, origin = _joined(pool), _joined(origin)

    duplicates = _duplicates(hashes[pool])
    if cfg.dedupe and duplicates:
        keep = np.sort(np.unique(hashes[pool], return_index=True)[1])
        pool, origin = pool[keep], origin[keep]

    order = rng.permutation(len(pool))[: cfg.max_rows]
    pool, origin = pool[order], origin[order]
    del order
    if cfg.eval_rows >= len(pool):
        raise DataError(f"data.eval_rows={cfg.eval_rows} leaves no training rows out of {len(pool)}")
    train, train_origin, held_out = pool[: -cfg.eval_rows], origin[: -cfg.eval_rows], pool[-cfg.eval_rows:]
    if sources[0].cfg.weight is not None:
        train = _weighted(train, train_origin, [s.cfg.weight for s in sources], rng)
        train_origin = np.searchsorted(offsets, train, side="right") - 1
    train_hashes, held_hashes = hashes[train], hashes[held_out]
    fingerprint = _fingerprint(train_hashes)
    train_hashes.sort()  # in place: the overlap is a binary search, not np.isin's copies of both
    found = np.searchsorted(train_hashes, held_hashes).clip(max=len(train_hashes) - 1)
    overlap = int((train_hashes[found] == held_hashes).sum())
    del train_hashes
    if overlap:
        logger.warning("%d of %d eval rows are also training rows: every evaluation on them is inflated "
                       "(set data.dedupe: true to drop duplicates)", overlap, len(held_out))

    combined = concatenate_datasets([s.dataset for s in sources]) if len(sources) > 1 else sources[0].dataset
    train_lengths = _joined([s.columns.length for s in sources])[train]
    trained = _joined([s.columns.trained_tokens for s in sources])
    unused = set.intersection(*(s.columns.unused for s in sources))
    for i, s in enumerate(sources):
        s.report.update(train_rows=int((train_origin == i).sum()),
                        eval_rows=int((np.searchsorted(offsets, held_out, side="right") - 1 == i).sum()))
    report = DataReport(
        source=" + ".join(s.cfg.name for s in sources),
        format=",".join(dict.fromkeys(s.report["format"] for s in sources)),
        fingerprint=fingerprint, eval_fingerprint=_fingerprint(held_hashes),
        rows_read=sum(s.report["rows_read"] for s in sources),
        rows_invalid=sum(s.report["rows_invalid"] for s in sources),
        rows_truncated=sum(s.report["rows_truncated"] for s in sources),
        train_rows=len(train), eval_rows=len(held_out), duplicate_rows=int(duplicates),
        train_eval_overlap=overlap, rows_deduped=int(duplicates) if cfg.dedupe else 0,
        invalid_examples=[e for s in sources for e in s.report.pop("invalid_examples")][:MAX_REPORTED],
        sources=[s.report for s in sources],
    )
    report.stats = length_stats(train_lengths, "train") | {"train_trained_tokens": int(trained[train].sum())}
    return PreparedData(_split_dataset(combined, train, unused), _split_dataset(combined, held_out, unused), report,
                        train_lengths)


def _prepare_source(src: SourceConfig, cfg: DataConfig, tokenizer, max_length: int, kind: RowKind) -> _Source:
    """One source read, then normalised, templated, tokenized and masked by one batched map; bad rows counted."""
    code = library_digest()
    raw = load_raw(src, cfg.seed, code)
    rows = raw.dataset
    fmt = src.format if src.format != "auto" else _detect(rows, src, kind)
    if fmt not in kind.formats:
        raise DataError(f"{src.name}: format {fmt!r} is not one the {kind.name} pipeline trains on "
                        f"({', '.join(kind.formats)})")
    settings = dict(format=fmt, columns=dict(src.columns), loss_on=cfg.loss_on, max_length=max_length,
                    truncate=cfg.truncate)
    fingerprint = _digest(dataset_fingerprint(rows), kind.name, settings, tokenizer_digest(tokenizer), code)
    requested = cfg.num_proc or environment_cores()
    num_proc = max(1, min(requested, len(rows) // ROWS_PER_PROCESS))
    with datasets_bar(f"preparing {src.name}", len(rows)):
        processed = rows.map(
            _process_in_chunks, batched=True, batch_size=MAP_BATCH_ROWS, writer_batch_size=MAP_BATCH_ROWS,
            num_proc=num_proc if num_proc > 1 else None, remove_columns=["row"], features=kind.features(),
            fn_kwargs={"process": kind.process, "features": kind.features(), "tokenizer": tokenizer, **settings},
            new_fingerprint=fingerprint, desc=f"preparing {src.name}",
        )
    columns = _scan(processed)
    bad, good = np.flatnonzero(columns.bad), _as_index(np.flatnonzero(np.logical_not(columns.bad)))
    listed = []
    if len(bad):
        sample = processed.select(bad[:MAX_REPORTED])
        listed = [f"{loc}: {why}" for loc, why in zip(sample["location"], sample["problem"])]
    if len(bad) and (cfg.on_invalid == "error" or not len(good)):
        more = f"\n  ... and {len(bad) - MAX_REPORTED} more" if len(bad) > MAX_REPORTED else ""
        why = "" if len(good) else " (no valid row left to train on)"
        raise DataError(f"{src.name}: {len(bad)} of {len(processed)} rows are invalid{why} (format {fmt}):\n  "
                        + "\n  ".join(listed) + more
                        + ("\n(set data.on_invalid: skip to train on the valid rows)" if len(good) else ""))
    report = {"name": src.name, "format": fmt, "rows_read": len(processed), "rows_invalid": len(bad),
              "rows_truncated": int(columns.truncated[good].sum()),
              "fingerprint": _fingerprint(columns.row_hash[good]), "invalid_examples": listed}
    return _Source(src, processed, good, report, columns)


def _process_in_chunks(batch: dict, process: Callable[..., dict], features, **settings):
    """`process` over PROCESS_ROWS rows at a time, each chunk turned into Arrow at once by datasets' own writer: a
    MAP_BATCH_ROWS batch is written as one record batch while only one chunk's Python objects (~32 KiB per row of
    token lists) are alive. Fewer, larger record batches matter to the main process: opening a memory-mapped Arrow
    file reads every batch's header, and each read maps up to 64 KiB of pages around it."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with arrow_writer(features, sink) as writer:
        for start in range(0, len(batch["row"]), PROCESS_ROWS):
            chunk = {name: values[start:start + PROCESS_ROWS] for name, values in batch.items()}
            out = process(chunk, **settings)
            out["location"] = chunk["location"]
            writer.write_batch(out)
        writer.finalize()
    return pa.ipc.open_stream(sink.getvalue()).read_all()


def parse_rows(texts: list[str], columns: dict, normalise_row: Callable[[dict], dict]):
    """Each JSON row renamed and normalised, or None with the problem that stopped it (two lists, in row order)."""
    normalised, problems = [], []
    for text in texts:
        try:
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                raise RowProblem(f"not valid JSON: {exc.msg} (column {exc.colno})") from None
            normalised.append(normalise_row(rename_columns(row, columns)))
            problems.append(None)
        except RowProblem as problem:
            normalised.append(None)
            problems.append(str(problem))
    return normalised, problems


def process_batch(batch: dict, tokenizer, format: str, columns: dict, loss_on: str, max_length: int,
                  truncate: bool) -> dict:
    """JSON rows -> normalised, templated, tokenized, masked rows (a `problem` instead for a bad row)."""
    normalised, problems = parse_rows(batch["row"], columns, lambda row: normalise(row, format))
    usable = [row for row in normalised if row is not None]
    tokenized = iter(tokenize_rows(usable, tokenizer, loss_on, max_length, truncate))
    out = {k: [] for k in ("messages", "text", "tools", "input_ids", "labels", "length", "trained_tokens",
                           "truncated", "row_hash", "problem")}
    for row, problem in zip(normalised, problems):
        result = next(tokenized) if row is not None else None
        problem = problem or (result.problem if result else None)
        ok = problem is None
        ids, labels = (result.input_ids, result.labels) if ok else ([], [])
        out["messages"].append(row["messages"] if ok else [])
        out["text"].append(row["text"] if ok else None)
        out["tools"].append(row["tools"] if ok else None)
        out["input_ids"].append(ids)
        out["labels"].append(labels)
        out["length"].append(len(ids))
        out["trained_tokens"].append(sum(t != IGNORE for t in labels))
        out["truncated"].append(bool(ok and result.truncated))
        out["row_hash"].append(_row_hash(row, ids, labels) if ok else 0)
        out["problem"].append(problem)
    return out


def _detect(rows, src: SourceConfig, kind: RowKind) -> str:
    first = None
    for text in rows.select(range(min(len(rows), 100)))["row"]:
        try:
            first = rename_columns(json.loads(text), src.columns)
        except json.JSONDecodeError:
            continue
        if isinstance(first, dict):
            break
    fmt = kind.detect(first) if isinstance(first, dict) else None
    if fmt is None:
        raise DataError(f"{src.name}: cannot tell the dataset format from its columns "
                        f"{sorted(first) if isinstance(first, dict) else []}; set format ({', '.join(kind.formats)}) "
                        "and map columns with columns")
    return fmt


def _as_index(positions: np.ndarray) -> np.ndarray:
    """One source's row positions as int32 below 2**31 rows: half the memory of numpy's int64."""
    return positions.astype(np.int32) if len(positions) and positions.max() < 2**31 else positions


def _duplicates(row_hashes: np.ndarray) -> int:
    """Rows whose hash an earlier row has (the array is sorted in place: pass a copy)."""
    row_hashes.sort()
    return int(np.count_nonzero(row_hashes[1:] == row_hashes[:-1]))


def _joined(arrays: list[np.ndarray]) -> np.ndarray:
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)  # one source: no copy


def _weighted(train: np.ndarray, origin: np.ndarray, weights: list[float], rng) -> np.ndarray:
    """The training rows redrawn so that each source makes up its weight's share (repeating rows when a source has
    fewer than its share; seeded)."""
    total, shares = len(train), np.asarray(weights) / sum(weights)
    drawn = []
    for i, share in enumerate(shares):
        mine = train[origin == i]
        want = int(round(share * total))
        if not len(mine) or not want:
            continue
        repeats, rest = divmod(want, len(mine))
        drawn += [np.tile(mine, repeats), rng.choice(mine, rest, replace=False)]
    return rng.permutation(np.concatenate(drawn))


def _row_hash(row: dict, ids: list[int], labels: list[int]) -> int:
    digest = hashlib.blake2b(json.dumps(row, sort_keys=True, ensure_ascii=False).encode(), digest_size=8)
    digest.update(np.asarray(ids, dtype=np.int32).tobytes())
    digest.update(np.asarray(labels, dtype=np.int32).tobytes())
    return int.from_bytes(digest.digest(), "little", signed=True)


def _digest(*parts) -> str:
    """A datasets fingerprint for a transform of ours: what it reads and how."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def _fingerprint(row_hashes: np.ndarray) -> str:
    """SHA-256 over the rows' hashes in order: any change of content, tokens, masks or selection shows."""
    return hashlib.sha256(np.ascontiguousarray(row_hashes, dtype=np.int64).data).hexdigest()  # no bytes copy


def tokenizer_digest(tokenizer) -> str:
    """What the tokenization depends on: the vocabulary and rules, the chat template, the special tokens."""
    digest = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode())
    digest.update(json.dumps([tokenizer.chat_template, tokenizer.special_tokens_map], sort_keys=True,
                             default=str).encode())
    return digest.hexdigest()


def _scan(dataset) -> _Columns:
    """The internal columns of the processed rows, batch by batch.

    Read from the Arrow files with plain reads, not through the memory map the dataset uses: touching a few bytes of
    every record batch of a mapped file maps the pages around each one (the kernel maps up to 64 KiB per fault), which
    grows with the data (measured at 1M rows: the main process's peak RSS 0.39 -> 0.32 GiB with this). The cost is
    reading every column of the processed files once more, one batch in memory at a time."""
    import pyarrow as pa
    import pyarrow.compute as pc

    def from_files(names):
        for name in names:
            with pa.OSFile(name) as file:
                yield from pa.ipc.open_stream(file)

    files = [f["filename"] for f in dataset.cache_files]
    # an in-memory table, or one behind an indices mapping (whose order the files do not follow), is read as it is
    batches = from_files(files) if files and indices(dataset) is None else iter(dataset.data.to_batches())
    total = len(dataset)
    numbers = {name: None for name in ("row_hash", "length", "trained_tokens", "truncated", "bad")}
    nulls, rows, longest = {"text": 0, "tools": 0}, 0, 0
    for batch in batches:
        end = rows + batch.num_rows
        if end > total:
            break
        values = {name: batch.column(name).to_numpy(zero_copy_only=False)
                  for name in ("row_hash", "length", "trained_tokens", "truncated")}
        values["bad"] = pc.is_valid(batch.column("problem")).to_numpy(zero_copy_only=False)
        for name, array in values.items():  # copied into one array per column: no view keeps a batch alive
            if numbers[name] is None:
                numbers[name] = np.empty(total, dtype=array.dtype)
            numbers[name][rows:end] = array
        rows = end
        for name in nulls:
            if name in batch.schema.names:
                nulls[name] += batch.column(name).null_count
        if "messages" in batch.schema.names and batch.num_rows:
            longest = max(longest, pc.max(pc.list_value_length(batch.column("messages"))).as_py() or 0)
    if rows != total:
        raise RuntimeError(f"the processed files do not hold the dataset's {total} rows (read {rows} or more)")
    names = dataset.column_names
    unused = {name for name in nulls if name in names and nulls[name] == rows}
    if "messages" in names and longest == 0:
        unused |= {"messages", "tools"} & set(names)
    return _Columns(**{name: array if array is not None else np.zeros(0) for name, array in numbers.items()},
                    unused=unused)


def _split_dataset(dataset, positions: np.ndarray, unused: set[str]):
    """The rows at `positions` (an indices mapping, no copy), without internal columns or ones no row uses.

    The mapping is built from the array as it is: `Dataset.select` turns the array into a list of numpy scalars
    (~40 MiB per million rows, kept by the allocator after it is freed) and pickles it for a fingerprint."""
    positions = np.asarray(positions).astype(np.uint64)  # the mapping's type, one copy
    fingerprint = _digest(dataset_fingerprint(dataset), hashlib.sha256(positions.data).hexdigest())
    if indices(dataset) is not None:  # never after our map: the general path, slow but right
        selected = dataset.select(positions, new_fingerprint=fingerprint)
    else:
        selected = indexed_view(dataset, positions, fingerprint)
    return selected.remove_columns(INTERNAL_COLUMNS + sorted(unused))


def prepare_file(path: str, tokenizer, max_length: int, loss_on: str = "assistant"):
    """Every row of one file (e.g. a user's evaluation file), checked and tokenized as training rows are; a bad row is
    a DataError naming it. Long rows are cut to `max_length` rather than refused (an evaluation scores what fits)."""
    cfg = DataConfig(source="file", path=str(path), truncate=True, loss_on=loss_on, eval_rows=1)
    source = _prepare_source(cfg.source_list()[0], cfg, tokenizer, max_length, SFT_ROWS)
    return _split_dataset(source.dataset, source.good, source.columns.unused)


def sft_features():
    from datasets import Features, Value

    message = {"role": Value("string"), "content": Value("string"), "tool_calls": Value("string"),
               "tool_call_id": Value("string"), "weight": Value("int8")}
    return Features({
        "location": Value("string"), "messages": [message], "text": Value("string"), "tools": Value("string"),
        "input_ids": [Value("int32")], "labels": [Value("int32")], "length": Value("int32"),
        "trained_tokens": Value("int32"), "truncated": Value("bool"), "row_hash": Value("int64"),
        "problem": Value("string"),
    })


SFT_ROWS = RowKind("finetune", FORMATS, lambda row: detect_format([row]), process_batch, sft_features)
