"""The dataset stage: every format and file type, row-by-row validation with a policy, splits and lineage."""

import json
import re
import shutil
from pathlib import Path

import pytest

from llm_engineering.config import DataConfig, load_run_config_file
from llm_engineering.data.prepare import ROWS_PER_PROCESS, prepare
from llm_engineering.data.sources import DataError, read_path
from llm_engineering.data.synthetic import UNSEEN_NAMES, UNSEEN_RESTAURANTS, UNSEEN_TEMPLATES, booking_rows
from tests.conftest import prepared

SAMPLES = Path(__file__).parent.parent / "data" / "samples"
CONFIGS = Path(__file__).parent.parent / "configs"


def test_synthetic_task_is_deterministic_and_seeded():
    assert booking_rows(20, seed=1) == booking_rows(20, seed=1)
    assert booking_rows(20, seed=1) != booking_rows(20, seed=2)


def test_the_evaluation_requests_are_made_of_what_training_never_shows():
    # data/samples/booking_unseen.jsonl is the generator's unseen set as shipped...
    shipped = (SAMPLES / "booking_unseen.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in shipped] == booking_rows(100, seed=2026, unseen=True)
    # ...and no training request, at any seed, holds its names, its restaurants' words or its sentence shapes
    words = {word for name in UNSEEN_RESTAURANTS for word in name.split()} - {"The"}
    shapes = [part.strip(" .,;-") for template in UNSEEN_TEMPLATES for part in re.split(r"\{\w+\}", template)]
    shapes = [part for part in shapes if len(part.split()) >= 3]
    assert "calling. Is there room at" in shapes and "Name on the booking:" in shapes
    for seed in range(5):
        for row in booking_rows(600, seed=seed):
            request = row["messages"][1]["content"]
            assert not any(shape in request for shape in shapes), request
            assert not set(re.findall(r"[\w']+", request)) & (words | set(UNSEEN_NAMES)), request


def test_synthetic_targets_are_the_fixed_json_shape():
    for row in booking_rows(50, seed=0):
        record = json.loads(row["messages"][-1]["content"])
        assert list(record) == ["name", "party_size", "restaurant", "day", "time"]
        assert isinstance(record["party_size"], int) and len(record["time"]) == 5


def test_split_is_seeded_and_disjoint(tokenizer):
    cfg = DataConfig(num_rows=60, eval_rows=10, seed=3)
    first, again = prepare(cfg, tokenizer, 256), prepare(cfg, tokenizer, 256)
    assert first.report == again.report and first.train.to_list() == again.train.to_list()
    assert (len(first.train), len(first.eval)) == (50, 10)
    assert first.report.train_rows == 50 and first.report.rows_read == 60
    assert not {json.dumps(r) for r in first.train} & {json.dumps(r) for r in first.eval}
    assert len(first.report.fingerprint) == 64


def test_two_map_processes_give_the_rows_and_problems_one_gives(tokenizer, tmp_path):
    """From 2 x ROWS_PER_PROCESS rows the map runs in two processes, each writing its own Arrow file; the per-row
    columns are read back across both files in order: the same bad rows named, split, fingerprints and tokens."""
    lines = [json.dumps(row) for row in booking_rows(2 * ROWS_PER_PROCESS + 10, seed=5)]
    broken = [7, ROWS_PER_PROCESS + 3, len(lines) - 2]  # one in each process's half, one near the end
    for i in broken:
        lines[i] = lines[i][:40]

    def run(num_proc):  # each in its own folder: the same rows, but not the other run's datasets cache
        path = tmp_path / f"proc{num_proc}" / "big.jsonl"
        path.parent.mkdir()
        path.write_text("\n".join(lines) + "\n")
        cfg = DataConfig(source="file", path=str(path), eval_rows=50, on_invalid="skip", num_proc=num_proc)
        return prepare(cfg, tokenizer, 256)

    two, one = run(2), run(1)
    assert len(two.train.cache_files) == 2 and len(one.train.cache_files) == 1  # one Arrow file per process
    assert one.report.rows_invalid == 3
    assert [e.split(":")[0] for e in one.report.invalid_examples] == [f"big.jsonl line {i + 1}" for i in broken]
    for field in ("fingerprint", "eval_fingerprint", "rows_invalid", "invalid_examples", "train_rows", "stats"):
        assert getattr(two.report, field) == getattr(one.report, field), field
    assert two.train[:50]["input_ids"] == one.train[:50]["input_ids"]
    assert two.eval["labels"] == one.eval["labels"]


def test_rows_processed_in_chunks_of_a_map_batch_keep_their_locations(tokenizer, tmp_path, monkeypatch):
    """A map batch is processed a few rows at a time and written as one record batch: chunk edges change nothing."""
    from llm_engineering.data import prepare as preparing

    lines = [json.dumps(row) for row in booking_rows(40, seed=3)]
    lines[12] = lines[12][:30]  # a bad row inside the second chunk of the second batch below

    def run(name, batch_rows, chunk_rows):
        monkeypatch.setattr(preparing, "MAP_BATCH_ROWS", batch_rows)
        monkeypatch.setattr(preparing, "PROCESS_ROWS", chunk_rows)
        path = tmp_path / name / "rows.jsonl"
        path.parent.mkdir()
        path.write_text("\n".join(lines) + "\n")
        return prepare(DataConfig(source="file", path=str(path), eval_rows=5, on_invalid="skip"), tokenizer, 256)

    chunked, whole = run("chunked", 10, 3), run("whole", 1000, 1000)
    assert [e.split(":")[0] for e in chunked.report.invalid_examples] == ["rows.jsonl line 13"]
    assert chunked.report.fingerprint == whole.report.fingerprint
    assert chunked.train["location"] == whole.train["location"] and chunked.train["labels"] == whole.train["labels"]
    assert chunked.train.data.to_batches()[0].num_rows == 10  # the map batch, not the chunk


def test_fingerprint_changes_with_content_and_with_the_template(tokenizer, tmp_path):
    base = prepare(DataConfig(num_rows=30, eval_rows=5), tokenizer, 256).report.fingerprint
    assert base != prepare(DataConfig(num_rows=30, eval_rows=5, seed=9), tokenizer, 256).report.fingerprint
    # the same rows trained on different tokens are different training data
    assert base != prepare(DataConfig(num_rows=30, eval_rows=5, loss_on="all"), tokenizer, 256).report.fingerprint


# Each sample file holds the same 60 booking conversations in another format (data/samples/make_samples.py).
@pytest.mark.parametrize("path, fmt, columns", [
    ("messages.jsonl", "messages", {}),
    ("sharegpt.json", "sharegpt", {}),
    ("alpaca.csv", "alpaca", {"system": "task", "instruction": "request", "output": "answer"}),
    ("prompt_completion.parquet", "prompt_completion", {}),
])
def test_every_conversational_format_becomes_the_same_trained_answers(tokenizer, path, fmt, columns):
    data = prepare(DataConfig(source="file", path=str(SAMPLES / path), columns=columns, eval_rows=5), tokenizer, 256)
    assert data.report.format == fmt and data.report.rows_read == 60 and data.report.rows_invalid == 0
    lines = (SAMPLES / "messages.jsonl").read_text().splitlines()  # the answers as the messages file holds them
    expected = {json.loads(line)["messages"][-1]["content"] for line in lines}
    answers = {r["messages"][-1]["content"] for r in [*data.train, *data.eval]}
    assert answers == expected
    trained = tokenizer.decode([t for t in data.train[0]["labels"] if t != -100])
    assert trained == data.train[0]["messages"][-1]["content"] + "<|im_end|>"


def test_plain_text_rows_train_every_token_and_end_with_eos(tokenizer):
    data = prepare(DataConfig(source="file", path=str(SAMPLES / "text.jsonl"), eval_rows=5), tokenizer, 256)
    row = data.train[0]
    assert data.report.format == "text"
    assert row["labels"] == row["input_ids"]
    assert tokenizer.decode(row["input_ids"]) == row["text"] + tokenizer.eos_token


def test_a_directory_of_files_is_read_as_one_dataset(tokenizer, tmp_path):
    shutil.copy(SAMPLES / "messages.jsonl", tmp_path / "part-1.jsonl")
    shutil.copy(SAMPLES / "messages.jsonl", tmp_path / "part-2.jsonl")
    data = prepare(DataConfig(source="file", path=str(tmp_path), eval_rows=5), tokenizer, 256)
    assert data.report.rows_read == 120


def test_an_unrecognisable_dataset_names_its_columns_and_the_formats(tmp_path, tokenizer):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"question": "a", "answer": "b"}\n')
    with pytest.raises(DataError, match=r"cannot tell the dataset format from its columns \['answer', 'question'\]"):
        prepare(DataConfig(source="file", path=str(path)), tokenizer, 256)


@pytest.mark.parametrize("content, message", [
    (None, "dataset file not found"),
    ("", "the file is empty"),
    ('{"messages": []}\n{not json\n', "line 2: not valid JSON"),
    (b"\xff\xfe\x00binary", "not UTF-8 text"),
])
def test_bad_files_are_named(tmp_path, tokenizer, content, message):
    path = tmp_path / "rows.jsonl"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=message) as err:
        prepare(DataConfig(source="file", path=str(path), eval_rows=1), tokenizer, 256)
    assert str(path) in str(err.value)


def test_a_broken_parquet_file_is_named(tmp_path):
    (tmp_path / "rows.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match=r"rows.parquet: not a readable Parquet file"):
        read_path(tmp_path / "rows.parquet")


def test_a_file_cut_off_midway_is_named_and_leaves_no_half_cache(tmp_path, monkeypatch):
    """A download that stopped midway: the rows read before the cut are not cached as if they were the file."""
    import gzip

    import datasets

    from llm_engineering.data import sources

    monkeypatch.setattr(sources, "RAW_BATCH_BYTES", 2000)  # several record batches before the cut
    rows = [json.dumps({"text": f"row {i} " + "words " * 60}) for i in range(200)]
    whole = gzip.compress(("\n".join(rows) + "\n").encode())
    path = tmp_path / "rows.jsonl.gz"
    path.write_bytes(whole[: len(whole) * 2 // 3])
    cache = Path(datasets.config.HF_DATASETS_CACHE) / "llm_engineering_raw"
    before = set(cache.glob("*")) if cache.exists() else set()
    with pytest.raises(DataError, match=r"rows.jsonl.gz: cannot be read \(EOFError"):
        read_path(path)
    assert set(cache.glob("*")) == before  # no partial file, no short cache

    path.write_bytes(whole)
    raw = read_path(path).dataset
    assert raw.num_rows == 200 and raw.data.to_batches().__len__() > 1
    assert raw["location"][-1] == "rows.jsonl.gz line 200" and json.loads(raw["row"][-1]) == json.loads(rows[-1])


GOOD = booking_rows(1, seed=0)[0]
BAD_ROWS = [  # (row, reason the report must give)
    ({"messages": [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "x"}]},
     "message 0 has unknown role 'wizard'"),
    ({"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "x"}]},
     "message 0 has empty content"),
    ({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]},
     "message 0 content is int, not a string"),
    ({"messages": [{"role": "user", "content": "question, no answer"}]}, "no assistant turn"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                   {"role": "assistant", "content": "c"}]}, "wrong turn order: message 1 is 'user', expected 'assistant'"),
    ({"conversation": []}, "missing field 'messages'"),
    ({"messages": [{"role": "user", "content": "long " * 300}, {"role": "assistant", "content": "x"}]},
     "tokens after templating, longer than train.max_length=256"),
]


def write_rows(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_every_bad_row_is_reported_with_its_line_and_reason_before_any_model_loads(tmp_path, tokenizer):
    path = write_rows(tmp_path / "my.jsonl", [GOOD] * 3 + [row for row, _ in BAD_ROWS])
    with pytest.raises(DataError) as err:
        prepare(DataConfig(source="file", path=str(path), eval_rows=1), tokenizer, 256)
    message = str(err.value)
    assert "7 of 10 rows are invalid" in message and "... and 2 more" in message
    for line, (_, reason) in enumerate(BAD_ROWS[:5], start=4):
        assert f"my.jsonl line {line}: {reason}" in message
    assert "data.on_invalid: skip" in message


def test_skip_policy_trains_on_the_valid_rows_and_reports_what_it_dropped(tmp_path, tokenizer):
    path = write_rows(tmp_path / "my.jsonl", [GOOD] * 3 + [row for row, _ in BAD_ROWS])
    data = prepare(DataConfig(source="file", path=str(path), eval_rows=1, on_invalid="skip"), tokenizer, 256)
    assert (data.report.rows_read, data.report.rows_invalid, len(data.train) + len(data.eval)) == (10, 7, 3)
    assert data.report.invalid_examples[0].startswith(f"my.jsonl line 4: {BAD_ROWS[0][1]}")
    assert data.report.metadata()["rows_invalid"] == 7


def test_truncation_is_opt_in_and_counted(tmp_path, tokenizer):
    long_row = BAD_ROWS[-1][0]
    path = write_rows(tmp_path / "long.jsonl", [GOOD] * 3 + [long_row])
    with pytest.raises(DataError, match="longer than train.max_length"):
        prepare(DataConfig(source="file", path=str(path), eval_rows=1), tokenizer, 256)
    # the long row's answer lies beyond max_length: truncating it would leave nothing to learn
    with pytest.raises(DataError, match="no trained token left after truncation"):
        prepare(DataConfig(source="file", path=str(path), eval_rows=1, truncate=True), tokenizer, 256)
    answer_first = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok " * 300}]}
    path = write_rows(tmp_path / "long.jsonl", [GOOD] * 3 + [answer_first])
    data = prepare(DataConfig(source="file", path=str(path), eval_rows=1, truncate=True), tokenizer, 256)
    assert data.report.rows_truncated == 1
    assert max(len(r["input_ids"]) for r in [*data.train, *data.eval]) == 256


def test_eval_rows_must_leave_training_rows(tokenizer):
    with pytest.raises(DataError, match="leaves no training rows"):
        prepare(DataConfig(num_rows=10, eval_rows=10), tokenizer, 256)


def test_hub_source_names_the_dataset_when_offline(tokenizer):
    # HF_DATASETS_OFFLINE=1 (conftest): the real `datasets.load_dataset` call is made and refused.
    with pytest.raises(DataError, match="could not load hub dataset 'someone/some-chat-data'"):
        prepare(DataConfig(source="hub", hub_id="someone/some-chat-data", hub_split="train"), tokenizer, 256)


def test_hub_rows_go_through_the_same_formats(tokenizer, tmp_path, monkeypatch):
    """Up to the network: a hub dataset that `datasets` returns (here from a local ShareGPT file)."""
    import datasets

    real = datasets.load_dataset
    calls = []

    def from_local(hub_id, name=None, split=None, revision=None, streaming=False):
        calls.append((hub_id, name, split, revision))
        return real("json", data_files=str(SAMPLES / "sharegpt.json"), split="train")

    monkeypatch.setattr(datasets, "load_dataset", from_local)
    cfg = DataConfig(source="hub", hub_id="org/chat", hub_config="en", hub_split="train", hub_revision="abc123",
                     eval_rows=5)
    data = prepare(cfg, tokenizer, 256)
    assert calls == [("org/chat", "en", "train", "abc123")]
    assert data.report.format == "sharegpt" and data.report.rows_read == 60


@pytest.mark.parametrize("streaming", [False, True], ids=["download", "streaming"])
def test_a_new_revision_of_a_hub_dataset_is_read_again(tokenizer, tmp_path, monkeypatch, streaming):
    """The hub's head moves: the second run, after the dataset gained rows, trains on the new rows, not a cached
    copy of the old ones (datasets re-resolves the revision on each load; we must not cache over it)."""
    import datasets

    real = datasets.load_dataset
    head = tmp_path / "head.jsonl"
    rows = [json.loads(line) for line in (SAMPLES / "messages.jsonl").read_text().splitlines()]

    def from_head(hub_id, name=None, split=None, revision=None, streaming=False):
        return real("json", data_files=str(head), split="train", streaming=streaming)

    monkeypatch.setattr(datasets, "load_dataset", from_head)
    cfg = DataConfig(source="hub", hub_id="org/chat", streaming=streaming, max_rows=1000, eval_rows=2)
    read = []
    for count in (20, 30):
        head.write_text("".join(json.dumps(row) + "\n" for row in rows[:count]))
        read.append(prepare(cfg, tokenizer, 256).report.rows_read)
    assert read == [20, 30]


@pytest.mark.parametrize("config", sorted(CONFIGS.glob("data_*.yaml")), ids=lambda p: p.stem)
def test_shipped_format_configs_prepare_their_sample_data(config):
    from llm_engineering.model.loading import load_tokenizer

    run = load_run_config_file(config)
    data = prepare(run.data, load_tokenizer(run.model.tokenizer), run.train.max_length)  # with the config's template
    assert data.report.rows_invalid == 0 and data.report.train_rows > 0


def test_token_length_statistics_describe_the_training_rows():
    data = prepared(DataConfig(num_rows=40, eval_rows=5))
    stats = data.report.stats
    lengths = sorted(len(r["input_ids"]) for r in data.train)
    assert (stats["train_tokens_min"], stats["train_tokens_max"]) == (lengths[0], lengths[-1])
    assert stats["train_tokens_total"] == sum(lengths)
    assert 0 < stats["train_trained_tokens"] < stats["train_tokens_total"]


def test_lengths_from_the_arrow_offsets_follow_the_split_and_give_the_padding_share():
    from llm_engineering.data.stats import list_lengths, padding_fraction

    data = prepared(DataConfig(num_rows=40, eval_rows=5))
    assert list_lengths(data.train).tolist() == [len(ids) for ids in data.train["input_ids"]]
    assert list_lengths(data.train).tolist() == data.train_lengths.tolist()  # the split's order, not the file's
    assert list_lengths(data.eval).tolist() == [len(ids) for ids in data.eval["input_ids"]]
    # one batch of rows 2, 4, 4, 4 pads to 4 x 4 slots for 14 tokens, whatever the shuffle; batches of one never pad
    assert padding_fraction([2, 4, 4, 4], batch_size=4) == 1 - 14 / 16
    assert padding_fraction([2, 4, 4, 4], batch_size=1) == 0.0
    assert padding_fraction([], batch_size=4) == 0.0
