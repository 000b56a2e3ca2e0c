"""Data as users bring it: files with the awkward parts real exports have, mixtures, OpenAI tool-calling rows,
duplicates, and the fingerprints that key caches and checkpoints. Each of the first four tests failed before the fix
it names (the data step split files with str.splitlines and fingerprinted the rows before max_rows and the split)."""

import csv
import gzip
import json
from pathlib import Path

import pytest

from llm_engineering.config import ConfigError, DataConfig, ModelConfig, load_run_config
from llm_engineering.data.prepare import prepare
from llm_engineering.data.sources import DataError
from llm_engineering.data.synthetic import booking_rows
from llm_engineering.model.loading import load_tokenizer

SAMPLES = Path(__file__).parent.parent / "data" / "samples"


@pytest.fixture(scope="module")
def tools_tokenizer():
    return load_tokenizer(ModelConfig(chat_template="chatml-tools"))


def trained_text(tokenizer, row) -> str:
    return tokenizer.decode([t for t in row["labels"] if t != -100])


def test_a_quoted_newline_in_a_csv_cell_is_kept(tmp_path, tokenizer):
    path = tmp_path / "export.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["instruction", "output"])
        writer.writeheader()
        writer.writerows({"instruction": f"List two steps ({i})", "output": "line 1\nline 2\r\nline 3"}
                         for i in range(6))
    data = prepare(DataConfig(source="file", path=str(path), eval_rows=1), tokenizer, 256)
    assert data.report.rows_read == 6
    assert data.train[0]["messages"][-1]["content"] == "line 1\nline 2\r\nline 3"
    assert trained_text(tokenizer, data.train[0]) == "line 1\nline 2\r\nline 3<|im_end|>"


def test_unicode_line_separators_inside_a_jsonl_string_do_not_split_the_row(tmp_path, tokenizer):
    rows = booking_rows(5, seed=1)
    rows[2]["messages"][1]["content"] += "\u2028and a second line\u2029end"
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    data = prepare(DataConfig(source="file", path=str(path), eval_rows=1), tokenizer, 256)
    assert (data.report.rows_read, data.report.rows_invalid) == (5, 0)
    contents = [m["content"] for r in [*data.train, *data.eval] for m in r["messages"]]
    assert any("\u2028and a second line\u2029end" in c for c in contents)


@pytest.mark.parametrize("change", [{"max_rows": 30}, {"eval_rows": 6}, {"seed": 3}])
def test_the_fingerprint_follows_the_rows_trained(tokenizer, change):
    """max_rows, eval_rows and seed change which rows are trained: the fingerprint (MLflow digest, checkpoint key)
    must change with them; eval rows have their own."""
    base = DataConfig(num_rows=40, eval_rows=5)
    first, second = prepare(base, tokenizer, 256), prepare(base.model_copy(update=change), tokenizer, 256)
    assert first.report.fingerprint != second.report.fingerprint
    assert prepare(base, tokenizer, 256).report.fingerprint == first.report.fingerprint
    assert first.report.eval_fingerprint not in ("", first.report.fingerprint)


def test_compressed_files_a_glob_and_a_directory_read_the_same_rows(tmp_path, tokenizer):
    zstandard = pytest.importorskip("zstandard")
    text = (SAMPLES / "messages.jsonl").read_bytes()
    (tmp_path / "part-1.jsonl.gz").write_bytes(gzip.compress(text))
    (tmp_path / "part-2.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(text))
    by_glob = prepare(DataConfig(source="file", path=str(tmp_path / "part-*"), eval_rows=5), tokenizer, 256)
    by_dir = prepare(DataConfig(source="file", path=str(tmp_path), eval_rows=5), tokenizer, 256)
    assert by_glob.report.rows_read == by_dir.report.rows_read == 120
    assert by_glob.report.duplicate_rows == 60  # the same file twice
    assert by_glob.report.fingerprint == by_dir.report.fingerprint


def test_duplicates_and_train_eval_overlap_are_counted_and_dedupe_drops_them(tmp_path, tokenizer, caplog):
    rows = booking_rows(20, seed=2)
    path = tmp_path / "dupes.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows + rows[:10]))
    kept = prepare(DataConfig(source="file", path=str(path), eval_rows=5), tokenizer, 256)
    assert kept.report.duplicate_rows == 10 and kept.report.train_rows == 25
    assert kept.report.train_eval_overlap == sum(
        json.dumps(r["messages"]) in {json.dumps(t["messages"]) for t in kept.train} for r in kept.eval)
    deduped = prepare(DataConfig(source="file", path=str(path), eval_rows=5, dedupe=True), tokenizer, 256)
    assert (deduped.report.rows_deduped, deduped.report.train_rows, deduped.report.train_eval_overlap) == (10, 15, 0)


def test_a_mixture_takes_each_source_in_its_format_and_weights_the_training_rows(tmp_path, tokenizer):
    cfg = DataConfig(sources=[
        {"source": "synthetic", "num_rows": 120, "weight": 3},
        {"source": "file", "path": str(SAMPLES / "alpaca.csv"), "weight": 1,
         "columns": {"system": "task", "instruction": "request", "output": "answer"}},
    ], eval_rows=10)
    data = prepare(cfg, tokenizer, 256)
    synthetic, alpaca = data.report.sources
    assert (synthetic["format"], alpaca["format"]) == ("messages", "alpaca")
    assert (synthetic["rows_read"], alpaca["rows_read"]) == (120, 60)
    assert synthetic["train_rows"] + alpaca["train_rows"] == data.report.train_rows
    assert synthetic["train_rows"] == pytest.approx(3 * alpaca["train_rows"], abs=2)
    assert data.report.metadata()["source_1_rows_read"] == 60


def test_a_missing_column_in_one_source_of_a_mixture_is_named_before_any_model_loads(tmp_path, tokenizer):
    path = tmp_path / "qa.csv"
    path.write_text("question,answer\nWhat?,That.\n")
    cfg = DataConfig(sources=[{"source": "synthetic", "num_rows": 20},
                              {"source": "file", "path": str(path), "format": "alpaca",
                               "columns": {"instruction": "question", "output": "reply"}}], eval_rows=2)
    with pytest.raises(DataError, match=r"qa.csv: 1 of 1 rows are invalid.*\n  qa.csv row 0: missing field 'output'"):
        prepare(cfg, tokenizer, 256)


def test_mixture_keys_are_checked_with_the_config():
    with pytest.raises(ConfigError, match="give every source a weight, or none"):
        load_run_config({"data": {"sources": [{"source": "synthetic", "weight": 2}, {"source": "synthetic"}]}})
    with pytest.raises(ConfigError, match=r"data.sources is set, so \['path'\] belong inside each source"):
        load_run_config({"data": {"sources": [{"source": "synthetic"}], "path": "x.jsonl"}})
    with pytest.raises(ConfigError, match="source 'file' needs path"):
        load_run_config({"data": {"sources": [{"source": "file"}]}})


def test_openai_tool_rows_train_the_assistant_calls_and_answers_only(tools_tokenizer):
    data = prepare(DataConfig(source="file", path=str(SAMPLES / "tools_openai.jsonl"), eval_rows=4),
                   tools_tokenizer, 768)
    assert data.report.rows_invalid == 0 and data.report.rows_read == 40
    for row in [*data.train][:8]:
        text, trained = tools_tokenizer.decode(row["input_ids"]), trained_text(tools_tokenizer, row)
        assert '"name": "book_table"' in text.split("<tools>")[-1]  # the definitions are in the prompt
        assert trained.startswith('<tool_call>\n{"name": "book_table", "arguments": {')  # the call is trained
        assert "confirmed" not in trained and "<tool_response>" in text  # the tool result is context
        assert "tell me the details" not in trained  # weight 0: context only
        assert trained.endswith("<|im_end|>") and trained.count("<|im_end|>") == 2
    # typed parts became text, and the tools kept their own schema (no keys merged in from the other tool)
    tools = json.loads(data.train[0]["tools"])
    assert set(tools[1]["function"]["parameters"]["properties"]) == {"day"}


def test_a_template_without_tool_support_refuses_tool_rows_by_location(tokenizer):
    with pytest.raises(DataError) as err:
        prepare(DataConfig(source="file", path=str(SAMPLES / "tools_openai.jsonl"), eval_rows=4), tokenizer, 768)
    assert "tools_openai.jsonl line 1: the chat template does not render tools or tool_calls, so they would be " \
        "dropped" in str(err.value)
    assert "chatml-tools" in str(err.value)


def tool_row(**changes) -> dict:
    row = json.loads((SAMPLES / "tools_openai.jsonl").read_text(encoding="utf-8").split("\n")[1])
    for index, message in changes.items():
        row["messages"][int(index.removeprefix("m"))].update(message)
    return row


@pytest.mark.parametrize("row, reason", [
    (tool_row(m1={"content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}),
     "message 1 content part 0 is of type 'image_url': only text parts can be trained"),
    (tool_row(m2={"tool_calls": [{"type": "function", "function": {"name": "book_table", "arguments": "{party: 2"}}]}),
     "message 2 tool call 0 (book_table) arguments: not valid JSON"),
    (tool_row(m4={"weight": 0.5}), "message 4 weight is 0.5: it must be 0 (not trained) or 1 (trained)"),
    (tool_row(m2={"weight": 0}, m4={"weight": 0}), "every assistant message has weight 0"),
    (tool_row(m3={"role": "user"}), "wrong turn order: message 3 is 'user', expected 'tool'"),
])
def test_bad_tool_rows_are_refused_with_their_line_and_reason(tmp_path, tools_tokenizer, row, reason):
    path = tmp_path / "tools.jsonl"
    good = (SAMPLES / "tools_openai.jsonl").read_text(encoding="utf-8").split("\n")[:3]
    path.write_text("\n".join(good + [json.dumps(row)]) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        prepare(DataConfig(source="file", path=str(path), eval_rows=1), tools_tokenizer, 768)
    assert f"tools.jsonl line 4: {reason}" in str(err.value)


def test_sharegpt_function_call_and_observation_turns_become_tool_calls(tmp_path, tools_tokenizer):
    """LLaMA-Factory's ShareGPT tool form: function_call / observation turns and a `tools` JSON string."""
    tools = json.dumps([{"name": "get_weather", "description": "Weather for a city.",
                         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}])
    rows = [{"conversations": [
        {"from": "human", "value": f"Weather in city {i}?"},
        {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": f"C{i}"}})},
        {"from": "observation", "value": json.dumps({"temp_c": 20 + i})},
        {"from": "gpt", "value": f"It is {20 + i} °C in C{i}."}], "tools": tools} for i in range(4)]
    path = tmp_path / "glaive.json"
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    data = prepare(DataConfig(source="file", path=str(path), eval_rows=1), tools_tokenizer, 512)
    assert data.report.format == "sharegpt"
    row = data.train[0]
    assert [m["role"] for m in row["messages"]] == ["user", "assistant", "tool", "assistant"]
    trained = trained_text(tools_tokenizer, row)
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "C' in trained and "temp_c" not in trained
    assert "get_weather" in tools_tokenizer.decode(row["input_ids"]).split("<tools>")[-1]


def test_the_dataset_step_rows_are_arrow_and_a_rerun_reuses_the_datasets_cache(tmp_path, tokenizer):
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in booking_rows(30, seed=4)))
    cfg = DataConfig(source="file", path=str(path), eval_rows=3)
    first, again = prepare(cfg, tokenizer, 256), prepare(cfg, tokenizer, 256)
    files = {f["filename"] for f in first.train.cache_files}
    assert files and files == {f["filename"] for f in again.train.cache_files}  # memory-mapped, and reused
    path.write_text("".join(json.dumps(r) + "\n" for r in booking_rows(30, seed=5)))
    edited = prepare(cfg, tokenizer, 256)
    assert edited.report.fingerprint != first.report.fingerprint
    assert not files & {f["filename"] for f in edited.train.cache_files}


def test_a_streamed_hub_dataset_takes_only_max_rows(tokenizer, monkeypatch):
    """Up to the network: `streaming: true` asks `datasets` for an IterableDataset and reads max_rows rows of it
    (here the stream is a local file, read lazily: counting what was pulled shows nothing past max_rows was read)."""
    import datasets

    pulled = []

    def rows():
        for i, row in enumerate(booking_rows(500, seed=6)):
            pulled.append(i)
            yield row

    def streamed(hub_id, name=None, split=None, revision=None, streaming=False):
        assert streaming and hub_id == "org/huge-chat"
        return datasets.IterableDataset.from_generator(rows)

    monkeypatch.setattr(datasets, "load_dataset", streamed)
    cfg = DataConfig(source="hub", hub_id="org/huge-chat", streaming=True, max_rows=30, eval_rows=5)
    data = prepare(cfg, tokenizer, 256)
    assert data.report.rows_read == 30 and data.report.train_rows == 25
    assert len(pulled) <= 31  # the stream was not read to its end
