"""A tokenizer carries state between calls: transformers 5 leaves `padding=True` enabled on the Rust backend. Rows
must tokenize the same whatever a tokenizer was used for before, and a saved tokenizer must not pad on its own."""

from transformers import AutoTokenizer

from llm_engineering.config import ModelConfig
from llm_engineering.data.synthetic import booking_rows
from llm_engineering.data.formats import normalise
from llm_engineering.data.tokenization import tokenize_rows
from llm_engineering.model.loading import load_tokenizer, save_tokenizer

TEXTS = ["hi", "a much longer sentence than that"]


def used_for_padded_batches():
    tokenizer = load_tokenizer(ModelConfig())
    tokenizer(TEXTS, padding=True)  # as the merge step's fidelity check and every batched generation do
    return tokenizer


def test_rows_tokenize_the_same_after_the_tokenizer_padded_a_batch():
    rows = [normalise(r, "messages") for r in booking_rows(4, seed=3)]
    fresh = tokenize_rows(rows, load_tokenizer(ModelConfig()), "assistant", 256, False)
    used = tokenize_rows(rows, used_for_padded_batches(), "assistant", 256, False)
    assert [r.input_ids for r in used] == [r.input_ids for r in fresh]
    assert [r.labels for r in used] == [r.labels for r in fresh]


def test_a_saved_tokenizer_pads_only_when_asked(tmp_path):
    save_tokenizer(used_for_padded_batches(), tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert [len(ids) for ids in reloaded(TEXTS)["input_ids"]] == [1, 6]
    assert [len(ids) for ids in reloaded(TEXTS, padding=True)["input_ids"]] == [6, 6]
