import json

import pytest

from llm_engineering.config import DataConfig
from llm_engineering.data.sources import (
    DataError, load_split, read_rows_file, to_prompt_completion, validate_rows,
)
from llm_engineering.data.synthetic import booking_rows


def test_synthetic_task_is_deterministic_and_seeded():
    assert booking_rows(20, seed=1) == booking_rows(20, seed=1)
    assert booking_rows(20, seed=1) != booking_rows(20, seed=2)


def test_synthetic_targets_are_the_fixed_json_shape():
    for row in booking_rows(50, seed=0):
        record = json.loads(row["messages"][-1]["content"])
        assert list(record) == ["name", "party_size", "restaurant", "day", "time"]
        assert isinstance(record["party_size"], int) and len(record["time"]) == 5


def test_split_is_seeded_and_disjoint():
    cfg = DataConfig(num_rows=60, eval_rows=10, seed=3)
    first, again = load_split(cfg), load_split(cfg)
    assert first == again
    assert (len(first.train), len(first.eval)) == (50, 10)
    assert not {json.dumps(r) for r in first.train} & {json.dumps(r) for r in first.eval}
    assert len(first.fingerprint) == 64


def test_fingerprint_changes_with_content():
    assert load_split(DataConfig(num_rows=30, eval_rows=5)).fingerprint != \
        load_split(DataConfig(num_rows=30, eval_rows=5, seed=9)).fingerprint


def test_local_jsonl_file_loads(tmp_path):
    path = tmp_path / "chat.jsonl"
    rows = booking_rows(12, seed=0)
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    split = load_split(DataConfig(source="file", path=str(path), eval_rows=2))
    assert len(split.train) + len(split.eval) == 12


def test_local_json_list_loads(tmp_path):
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(booking_rows(5, seed=0)))
    assert len(read_rows_file(path)) == 5


@pytest.mark.parametrize("content, message", [
    (None, "dataset file not found"),
    ("", "the file is empty"),
    ('{"messages": []}\n{not json\n', "line 2 is not valid JSON"),
    (b"\xff\xfe\x00binary", "not UTF-8 text"),
])
def test_bad_files_are_named(tmp_path, content, message):
    path = tmp_path / "rows.jsonl"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=message) as err:
        read_rows_file(path)
    assert str(path) in str(err.value)


def test_every_bad_row_is_reported_with_number_and_reason():
    good = booking_rows(1, seed=0)[0]
    rows = [
        good,
        {"text": "no messages"},
        {"messages": [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "x"}]},
        {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "x"}]},
        {"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]},
        {"messages": [{"role": "user", "content": "question, no answer"}]},
    ]
    with pytest.raises(DataError) as err:
        validate_rows(rows, "my.jsonl")
    message = str(err.value)
    assert "my.jsonl: 5 of 6 rows are invalid" in message
    assert "row 1: missing 'messages' list" in message
    assert "row 2: message 0 has unknown role 'wizard'" in message
    assert "row 3: message 0 has empty content" in message
    assert "row 4: message 0 content is int, not a string" in message
    assert "row 5: the last message is not from the assistant" in message


def test_eval_rows_must_leave_training_rows():
    with pytest.raises(DataError, match="leaves no training rows"):
        load_split(DataConfig(num_rows=10, eval_rows=10))


def test_hub_source_names_the_dataset_when_offline():
    # HF_DATASETS_OFFLINE=1 (conftest): the real `datasets.load_dataset` call is made and refused.
    with pytest.raises(DataError, match="could not load hub dataset 'someone/some-chat-data'"):
        load_split(DataConfig(source="hub", hub_id="someone/some-chat-data", hub_split="train"))


def test_prompt_completion_trains_only_the_last_assistant_turn():
    rows = booking_rows(2, seed=0)
    columns = to_prompt_completion(rows)
    assert [m["role"] for m in columns["prompt"][0]] == ["system", "user"]
    assert columns["completion"][0] == [rows[0]["messages"][-1]]
