"""Preference rows as exporters write them (UltraFeedback's whole conversations, LLaMA-Factory's ShareGPT pairs, a
CSV with a user's own column names), validated with every bad row named before any model loads, and tokenized
exactly as TRL's DPOTrainer tokenizes them."""

import json
from pathlib import Path

import pytest

from llm_engineering.config import DataConfig
from llm_engineering.data.preference import PREFERENCE_ROWS
from llm_engineering.data.prepare import prepare
from llm_engineering.data.sources import DataError
from llm_engineering.data.synthetic import SYSTEM_PROMPT

SAMPLES = Path(__file__).parent.parent / "data" / "samples"


def pairs(cfg: DataConfig, tokenizer, max_length: int = 256):
    return prepare(cfg, tokenizer, max_length, kind=PREFERENCE_ROWS)


def test_ultrafeedback_rows_keep_the_shared_conversation_as_the_prompt(tokenizer):
    data = pairs(DataConfig(source="file", path=str(SAMPLES / "preference_ultrafeedback.jsonl"), eval_rows=4,
                            seed=1), tokenizer)
    assert data.report.format == "preference" and data.report.rows_read == 36 and data.report.rows_invalid == 0
    rows = {row["prompt"][-1]["content"]: row for row in data.train.to_list() + data.eval.to_list()}
    assert len(rows) == 36
    separated = next(text for text in rows if "\u2028" in text)  # one row, not split at the line separator
    assert separated.endswith("\u2028(sent from my phone)")
    multi_turn = next(row for row in rows.values() if len(row["prompt"]) == 4)
    assert [m["role"] for m in multi_turn["prompt"]] == ["system", "user", "assistant", "user"]
    for row in rows.values():  # the prompt once (not repeated in the responses), one assistant turn each
        assert row["prompt"][0] == {"role": "system", "content": SYSTEM_PROMPT}
        assert [m["role"] for m in row["chosen"]] == ["assistant"] == [m["role"] for m in row["rejected"]]
        assert json.loads(row["chosen"][0]["content"])["name"]  # the typed content part became its text
    assert "score_chosen" not in data.train.column_names


def test_sharegpt_pairs_and_a_csv_with_its_own_column_names_read_as_the_same_pairs(tokenizer):
    sharegpt = pairs(DataConfig(source="file", path=str(SAMPLES / "preference_sharegpt.json"), eval_rows=4),
                     tokenizer)
    assert sharegpt.report.format == "sharegpt_preference"
    row = sharegpt.train[0]
    assert [m["role"] for m in row["prompt"]] == ["system", "user"]
    csv = pairs(DataConfig(source="file", path=str(SAMPLES / "preference_pairs.csv"), eval_rows=4,
                           columns={"prompt": "question", "chosen": "good", "rejected": "bad"}), tokenizer)
    assert csv.report.format == "preference" and csv.report.rows_invalid == 0
    first = csv.train[0]
    assert first["prompt"][0]["role"] == "user" and "\n\n" in first["prompt"][0]["content"]  # quoted newlines kept
    assert first["rejected"][0]["content"].endswith("\n")


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows))
    return path


GOOD = {"prompt": "Book Luigi's for two on Friday at 19:00, name Rossi.",
        "chosen": '{"name": "Rossi", "party_size": 2}', "rejected": '{"name": "rossi", "party_size": "two"}'}


def test_every_bad_preference_row_is_named_with_its_line_before_any_model_loads(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "pairs.jsonl", [
        GOOD,
        {"prompt": GOOD["prompt"], "chosen": GOOD["chosen"]},                                 # line 2: no rejected
        {**GOOD, "rejected": GOOD["chosen"] + "  "},                                          # line 3: the same
        {**GOOD, "chosen": "   "},                                                            # line 4: empty
        {**GOOD, "prompt": [{"role": "assistant", "content": "hi"}]},                         # line 5: no user
        {"prompt": [{"role": "user", "content": "q"}],
         "chosen": [{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "book"}}]}],
         "rejected": [{"role": "assistant", "content": "no"}]},                               # line 6: tool call
        {**GOOD, "chosen": "word " * 400},                                                    # line 7: too long
        '{"prompt": "cut off',                                                                # line 8: not JSON
    ] + [GOOD] * 4)
    with pytest.raises(DataError) as caught:
        pairs(DataConfig(source="file", path=str(path), eval_rows=1), tokenizer, max_length=128)
    message = str(caught.value)
    assert "7 of 12 rows are invalid (format preference)" in message
    assert "line 2: missing field 'rejected'" in message
    assert "line 3: 'chosen' and 'rejected' are the same response (nothing to prefer)" in message
    assert "line 4: 'chosen' is empty" in message
    assert "line 5: wrong turn order in the prompt: message 0 is 'assistant', expected 'user'" in message
    assert "line 6: chosen[0]: tool calls and results are not supported in preference rows yet" in message
    assert "... and 2 more" in message  # the long row and the broken line are counted past the first five

    skipped = pairs(DataConfig(source="file", path=str(path), eval_rows=1, on_invalid="skip", truncate=True),
                    tokenizer, max_length=128)
    assert skipped.report.rows_invalid == 6  # with truncate the long row is kept, cut, and counted
    assert skipped.report.rows_truncated == 1


def test_a_prompt_that_fills_max_length_is_refused_unless_truncation_cuts_it(tmp_path, tokenizer):
    long = {**GOOD, "prompt": "please " * 300 + GOOD["prompt"]}
    path = write_jsonl(tmp_path / "long-prompt.jsonl", [long] + [GOOD] * 3)
    with pytest.raises(DataError, match=r"line 1: the prompt alone is \d+ tokens, train.max_length=128: nothing of the "
                                        r"responses would be trained \(data.truncate: true cuts the prompt"):
        pairs(DataConfig(source="file", path=str(path), eval_rows=1), tokenizer, max_length=128)
    data = pairs(DataConfig(source="file", path=str(path), eval_rows=1, truncate=True), tokenizer, max_length=128)
    rows = data.train.to_list() + data.eval.to_list()
    cut = next(row for row in rows if row["prompt"][0]["content"] != GOOD["prompt"])
    assert cut["prompt"][0]["content"].startswith("…please please") and cut["prompt"][0]["content"].endswith(
        GOOD["prompt"])  # the start went, the request stayed
    assert data.report.rows_truncated == 1
    # a system message that leaves no room for the request cannot be cut to fit: named, with the numbers
    system = write_jsonl(tmp_path / "long-system.jsonl", [{**GOOD, "prompt": [
        {"role": "system", "content": "be brief " * 200}, {"role": "user", "content": GOOD["prompt"]}]}] + [GOOD] * 3)
    with pytest.raises(DataError, match=r"line 1: the prompt is \d+ tokens and cannot be cut to \d+ \(train.max_length="
                                        r"128\): its system message alone is longer"):
        pairs(DataConfig(source="file", path=str(system), eval_rows=1, truncate=True), tokenizer, max_length=128)


def test_sft_and_preference_pipelines_refuse_each_others_rows(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "pairs.jsonl", [GOOD] * 4)
    with pytest.raises(DataError, match="format 'preference' is not one the finetune pipeline trains on"):
        prepare(DataConfig(source="file", path=str(path), eval_rows=1, format="preference"), tokenizer, 128)
    with pytest.raises(DataError, match="format 'messages' is not one the preference pipeline trains on"):
        pairs(DataConfig(source="file", path=str(SAMPLES / "messages.jsonl"), format="messages"), tokenizer)


def test_the_synthetic_preference_task_prefers_the_exact_record(tokenizer):
    data = pairs(DataConfig(task="booking_preference", num_rows=40, eval_rows=8), tokenizer)
    assert data.report.rows_invalid == 0 and data.report.train_rows == 32
    for row in data.train.to_list():
        record = json.loads(row["chosen"][0]["content"])
        assert list(record) == ["name", "party_size", "restaurant", "day", "time"]
        assert row["rejected"][0]["content"] != row["chosen"][0]["content"]


def test_our_token_counts_are_what_trl_trains_on(tokenizer, tiny_model_cfg, tmp_path):
    """The dataset step measures lengths (and refuses long rows) with the trainer's own tokenization: TRL's
    DPOTrainer re-tokenizes the rows, and must arrive at the same ids. Fails if TRL changes how it tokenizes."""
    from trl import DPOConfig, DPOTrainer

    from llm_engineering.data.preference import tokenize_pairs
    from llm_engineering.model.loading import load_model
    from llm_engineering.training.preference import pair_dataset

    data = pairs(DataConfig(source="file", path=str(SAMPLES / "preference_ultrafeedback.jsonl"), eval_rows=4,
                            seed=3), tokenizer)
    rows = data.train.to_list()
    ours = tokenize_pairs(rows, tokenizer, 256, truncate=False)
    trainer = DPOTrainer(model=load_model(tiny_model_cfg), processing_class=tokenizer, train_dataset=pair_dataset(rows),
                         args=DPOConfig(output_dir=str(tmp_path), max_length=256, report_to=[], use_cpu=True))
    theirs = trainer.train_dataset
    assert len(theirs) == len(ours) == 32
    for mine, trl_row in zip(ours, theirs):
        for key in ("prompt_ids", "chosen_ids", "rejected_ids"):
            assert mine[key] == trl_row[key], key


def test_long_prompts_are_cut_from_their_start_so_the_answers_fit_when_truncation_is_on(tokenizer):
    """A chat export's pairs: earlier exchanges and pasted e-mail threads before the request. With data.truncate the
    prompt loses its earliest turns, then the start of its earliest message kept, and every pair trains; without
    it the long ones are refused, naming the setting."""
    source = dict(source="file", path=str(SAMPLES / "preference_sharegpt_long.json"), eval_rows=4, seed=3)
    originals = {turns["conversations"][-1]["value"][-60:]: turns
                 for turns in json.loads((SAMPLES / "preference_sharegpt_long.json").read_text())}
    refused = pairs(DataConfig(**source, on_invalid="skip"), tokenizer, max_length=160)
    assert refused.report.rows_invalid >= 10
    assert "more than train.max_length=160 (set data.truncate: true to cut it)" in json.dumps(
        refused.report.invalid_examples, ensure_ascii=False)

    data = pairs(DataConfig(**source, truncate=True), tokenizer, max_length=160)
    assert data.report.rows_invalid == 0 and data.report.rows_read == 30
    rows = data.train.to_list() + data.eval.to_list()
    cut = 0
    for row in rows:
        original = originals[row["prompt"][-1]["content"][-60:]]  # the request itself is always kept, to its end
        turns = [{"role": {"human": "user", "gpt": "assistant"}[t["from"]], "content": t["value"]}
                 for t in original["conversations"]]
        assert row["prompt"][0] == {"role": "system", "content": SYSTEM_PROMPT}
        for side in ("chosen", "rejected"):  # the answers fit whole: nothing of them is cut
            assert len(tokenizer.apply_chat_template(row["prompt"] + row[side], tokenize=True)) <= 160
        if row["prompt"][1:] != turns:
            cut += 1
            kept = row["prompt"][1:]
            assert kept[0]["role"] == "user" and len(kept) < len(turns) or kept[0]["content"].startswith("…")
            assert kept[1:] == turns[len(turns) - len(kept) + 1:]  # the turns nearest the answer, untouched
            assert turns[len(turns) - len(kept)]["content"].endswith(kept[0]["content"].removeprefix("…"))
    assert data.report.rows_truncated == cut >= 10
    assert any(row["prompt"][-1]["content"].startswith("…") for row in rows)  # a pasted thread cut inside
