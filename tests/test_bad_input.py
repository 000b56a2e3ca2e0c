"""Bad input gets a clear error naming what and where, before heavy work, and damages nothing already produced.
(More cases live beside the code they guard: test_config, test_data, test_model, test_adapter_options, test_pipeline.)"""

import json
import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_engineering.config import AdapterConfig, ConfigError, ModelConfig, TrainConfig, load_run_config
import re

from llm_engineering.config import DataConfig
from llm_engineering.data.formats import FORMATS, RowProblem, normalise
from llm_engineering.data.prepare import prepare
from llm_engineering.data.sources import DataError, read_path
from llm_engineering.data.synthetic import booking_rows
from llm_engineering.export.export_dir import ExportError, check_target
from llm_engineering.model.loading import ModelLoadError, load_tokenizer
from llm_engineering.training.memory import TrainingOutOfMemory, out_of_memory_advice


def test_truncated_jsonl_names_the_broken_line(tmp_path, tokenizer):
    path = tmp_path / "rows.jsonl"
    text = "\n".join(json.dumps(r) for r in booking_rows(3, seed=0))
    path.write_text(text[:-15])  # cut inside the last row, as an interrupted download would
    with pytest.raises(DataError, match=r"rows.jsonl line 3: not valid JSON"):
        prepare(DataConfig(source="file", path=str(path), eval_rows=1), tokenizer, 256)


def test_unsupported_extension_and_json_that_is_not_a_list(tmp_path):
    (tmp_path / "rows.txt").write_text("a,b\n")
    with pytest.raises(DataError, match=r"unsupported file type '.txt' \(expected .jsonl, .json, .csv, .parquet, optionally"):
        read_path(tmp_path / "rows.txt")
    (tmp_path / "rows.json").write_text('{"messages": []}')
    with pytest.raises(DataError, match="expected a JSON list of rows, found dict"):
        read_path(tmp_path / "rows.json")


def test_a_dataset_with_no_valid_row_is_refused_with_the_count(tmp_path, tokenizer):
    path = tmp_path / "chat.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n' * 7)
    for policy in ("error", "skip"):  # skipping every row leaves nothing to train on: refused either way
        with pytest.raises(DataError, match=r"(?s)chat.jsonl: 7 of 7 rows are invalid.*\.\.\. and 2 more"):
            prepare(DataConfig(source="file", path=str(path), on_invalid=policy), tokenizer, 256)
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(DataError, match="no rows"):
        prepare(DataConfig(source="file", path=str(tmp_path / "empty.json")), tokenizer, 256)


@pytest.mark.parametrize("tree, message", [
    ({"adapter": {"r": "eight"}}, "adapter.r = 'eight': Input should be a valid integer"),
    ({"train": {"learning_rate": "fast"}}, "train.learning_rate = 'fast': Input should be a valid number"),
    ({"train": {"learning_rate": 0}}, "train.learning_rate = 0: Input should be greater than 0"),
    ({"data": {"eval_rows": -1}}, "data.eval_rows = -1"),
    ({"adapter": {"target_modules": []}}, "target_modules must name at least one module"),
    ({"model": {"source": "local"}}, "source 'local' needs model.name_or_path"),
    ({"modle": {}}, "modle: unknown key"),
    ({"export": {"max_shard_size": "huge"}}, "export.max_shard_size = 'huge'"),
])
def test_wrong_types_and_values_name_the_key(tree, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_run_config(tree)


def test_a_tokenizer_without_chat_template_is_refused(tiny_model_dir, tmp_path):
    bare = tmp_path / "no-template"
    shutil.copytree(tiny_model_dir, bare)
    (bare / "chat_template.jinja").unlink()
    config = json.loads((bare / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="has no chat template"):
        load_tokenizer(ModelConfig(source="local", name_or_path=str(bare)))


def test_an_existing_export_is_neither_overwritten_nor_touched_when_overwrite_is_false(tmp_path):
    existing = tmp_path / "model"
    existing.mkdir()
    (existing / "weights.safetensors").write_bytes(b"precious")
    with pytest.raises(ExportError, match="already exists and export.overwrite is false"):
        check_target(existing, overwrite=False)
    assert (existing / "weights.safetensors").read_bytes() == b"precious"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match="exists and is not a directory"):
        check_target(tmp_path / "file", overwrite=True)


def test_out_of_memory_names_the_settings_to_change():
    cfg = TrainConfig(per_device_batch_size=8, gradient_accumulation_steps=1, max_length=2048)
    with pytest.raises(TrainingOutOfMemory) as err:
        with out_of_memory_advice(ModelConfig(), AdapterConfig(), cfg):
            torch.empty(2**50, dtype=torch.uint8)  # a real allocation failure from torch's CPU allocator
    message = str(err.value)
    assert "ran out of CPU RAM" in message
    assert "train.per_device_batch_size: 4 with train.gradient_accumulation_steps: 2" in message
    assert "train.max_length (now 2048)" in message and "adapter.gradient_checkpointing: true" in message
    assert "model.quantization.method: 4bit" in message and "rerun to resume" in message


def test_other_runtime_errors_are_not_mistaken_for_out_of_memory():
    with pytest.raises(RuntimeError, match="shape mismatch"):
        with out_of_memory_advice(ModelConfig(), AdapterConfig(), TrainConfig()):
            raise RuntimeError("shape mismatch")


def row_problem(row, fmt):
    try:
        normalise(row, fmt)
    except RowProblem as problem:
        return str(problem)
    return None


KEYS = ["messages", "role", "content", "text", "system", "user", "assistant", "conversations", "from", "value",
        "human", "gpt", "instruction", "input", "output", "prompt", "completion"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=4),
    max_leaves=12,
)


message_like = st.dictionaries(st.sampled_from(["role", "content"]), json_values, max_size=2)
row_like = json_values | st.fixed_dictionaries({"messages": st.lists(message_like | json_values, max_size=4)})


@settings(max_examples=400, deadline=None)
@given(row_like, st.sampled_from(FORMATS))
def test_the_row_validator_never_crashes_and_always_gives_a_reason(row, fmt):
    problem = row_problem(row, fmt)
    assert problem is None or (isinstance(problem, str) and problem)
    if problem is None:  # anything it accepts is trainable text or a conversation ending with the assistant
        normalised = normalise(row, fmt)
        assert normalised.get("text", "").strip() or normalised["messages"][-1]["role"] == "assistant"


roles = st.sampled_from(["system", "user", "assistant"])
messages = st.lists(st.fixed_dictionaries({"role": roles, "content": st.text(min_size=1).filter(str.strip)}),
                    min_size=1, max_size=5)


@settings(max_examples=200, deadline=None)
@given(messages)
def test_a_well_formed_conversation_is_accepted_exactly_when_its_turns_are_in_order(conversation):
    problem = row_problem({"messages": conversation}, "messages")
    roles = " ".join(m["role"] for m in conversation)
    assert (problem is None) == bool(re.fullmatch(r"(system )?(user assistant)( user assistant)*", roles))


def test_pickled_weights_load_only_when_explicitly_allowed(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from llm_engineering.model.loading import load_model

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, pickled)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    (pickled / "model.safetensors").unlink()
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    cfg = ModelConfig(source="local", name_or_path=str(pickled), dtype="float32")
    with pytest.raises(ModelLoadError, match="pickled .bin checkpoints are refused"):
        load_model(cfg)
    allowed = load_model(cfg.model_copy(update={"allow_pickle_weights": True}))
    assert torch.equal(allowed.model.embed_tokens.weight, model.model.embed_tokens.weight)
