"""The evaluate stage on a real (tiny) model and the real tokenizer: perplexity as the model's own loss, the
regression probes, base vs fine-tuned side by side, and the run-config checks made before any step runs."""

import json
import math

import pytest
import torch

from llm_engineering.config import ConfigError, DataConfig, EvalConfig, load_run_config, load_run_config_file
from llm_engineering.data.tokenization import IGNORE
from llm_engineering.evaluation import PROBES, compare, contains, evaluate_checkpoint, perplexity
from llm_engineering.evaluation.compile_checks import check_evaluation
from tests.conftest import prepared
from tests.pipeline_helpers import PROJECT


@pytest.fixture(scope="module")
def eval_rows():
    data = prepared(DataConfig(num_rows=40, eval_rows=6))
    return data.eval.to_list()


def test_perplexity_is_the_models_own_loss_over_the_scored_tokens_whatever_the_batching(tiny_model_dir, eval_rows):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert len({len(r["input_ids"]) for r in eval_rows}) > 1  # rows of different lengths: padding is exercised
    nll, tokens = 0.0, 0
    for row in eval_rows:  # transformers' own loss, one unpadded row at a time
        labels = torch.tensor([row["labels"]])
        out = model(input_ids=torch.tensor([row["input_ids"]]), labels=labels)
        scored = int((labels[:, 1:] != IGNORE).sum())
        nll, tokens = nll + out.loss.item() * scored, tokens + scored
    expected = math.exp(nll / tokens)
    for batch_size in (1, 4, 6):
        assert perplexity(model, eval_rows, batch_size=batch_size) == pytest.approx(expected, rel=1e-5)


def test_each_answer_is_cut_at_its_own_bound_whichever_rows_share_its_batch(tiny_model_dir, eval_rows):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm_engineering.model.generation import generate_ids

    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)
    conversations = [row["messages"][:-1] for row in eval_rows]
    bounds = [3, 9, 1, 12, 5, 7]
    alone = [generate_ids(model, tokenizer, [c], bound, 1)[0] for c, bound in zip(conversations, bounds)]
    together = generate_ids(model, tokenizer, conversations, bounds, len(conversations))
    assert [len(ids) for ids, _ in alone] == bounds  # this random model never stops: each ran to its bound
    assert together == alone


def test_contains_matches_whole_words_and_numbers_ignoring_case():
    assert contains("The capital of France is Paris.", "Paris")
    assert contains("PARIS", "paris")
    assert not contains("The answer is 42.", "4")
    assert not contains("Parisian food", "Paris")


def test_a_reasoning_models_think_block_is_not_part_of_the_scored_answer():
    from llm_engineering.scoring import SCORERS, answer_of

    answer = '{"name": "Ann", "people": 2}'
    thought = f"<think>\nTwo people, Ann.\n</think>\n\n{answer}"
    assert answer_of(thought) == answer and SCORERS["json_exact_match"](answer_of(thought), answer)
    assert answer_of("<think>\n\n</think>\n\nParis") == "Paris"  # Qwen3's empty block when thinking is off
    assert answer_of("I <think> so</think>") == "I <think> so</think>"  # only a block the answer opens with


def test_the_shipped_probes_are_short_general_questions_with_short_answers():
    probes = [json.loads(line) for line in PROBES.read_text().splitlines()]
    assert len(probes) >= 20
    assert all([m["role"] for m in p["messages"]] == ["user", "assistant"] for p in probes)
    assert all(len(p["messages"][1]["content"].split()) <= 2 for p in probes)


def test_base_and_finetuned_are_scored_the_same_way_and_paired_prompt_by_prompt(tiny_model_dir, tiny_model_cfg,
                                                                                eval_rows, tmp_path):
    from datasets import Dataset

    # the user's own probes, as ShareGPT rows with the awkward parts real files have
    mine = tmp_path / "my-probes.jsonl"
    mine.write_text("".join(json.dumps({"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]},
                                       ensure_ascii=False) + "\n"
                            for q, a in [("Quelle est la capitale de l'Allemagne ?\u2028Réponds en un mot.", "Berlin"),
                                         ("Name the largest ocean,\nplease.", "Pacific")]))
    evaluation = EvalConfig(max_rows=4, max_new_tokens=8, batch_size=4, metric="json_exact_match",
                            regression={"file": str(mine), "max_new_tokens": 8})
    dataset = Dataset.from_list(eval_rows)
    base = evaluate_checkpoint(tiny_model_cfg, None, dataset, evaluation, "json_exact_match", "float32", 256)
    tuned = evaluate_checkpoint(tiny_model_cfg, tiny_model_dir, dataset, evaluation, "json_exact_match", "float32",
                                256, reference=base.general)
    assert (base.role, tuned.role) == ("base", "finetuned")
    # general ability: the base answered the general prompts; the same weights, scored teacher-forced on those
    # answers, pick the same tokens (batched left-padded generation and one forward pass agree)
    assert len(base.general) == evaluation.regression.general_prompts == 100
    assert [g["answer_ids"] for g in tuned.general] == [g["answer_ids"] for g in base.general]
    assert base.metrics["base_general_agreement"] >= 0.99
    assert tuned.metrics["finetuned_general_agreement"] == pytest.approx(base.metrics["base_general_agreement"])
    assert tuned.metrics["finetuned_general_probability"] == pytest.approx(base.metrics["base_general_probability"])
    shipped = len(PROBES.read_text().splitlines())
    assert [s["set"] for s in base.samples] == ["task"] * 4 + ["regression"] * (shipped + 2)
    assert base.samples[-2]["reference"] == "Berlin" and "\u2028" in base.samples[-2]["prompt"]
    metrics, table = compare(base, tuned)
    assert {"base_json_exact_match", "finetuned_perplexity", "base_regression_score", "regression_drop"} <= set(metrics)
    # the same weights loaded two ways (the base path and the export path) score the same on the same prompts
    assert metrics["base_perplexity"] == pytest.approx(metrics["finetuned_perplexity"], rel=1e-5)
    assert metrics["regression_drop"] == 0.0 and base.eval_fingerprint == tuned.eval_fingerprint
    assert metrics["general_drop"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["general_drop_ci_low"] <= 0.0 <= metrics["general_drop_ci_high"] + 1e-6
    assert [row["base_output"] for row in table] == [row["finetuned_output"] for row in table]
    assert len(table) == len(base.samples)


def test_an_eval_file_replaces_the_held_out_split(tiny_model_cfg, eval_rows, tmp_path):
    from datasets import Dataset

    own = tmp_path / "eval.csv"  # a CSV export with a quoted newline
    own.write_text('instruction,output\n"Say hi,\nbriefly.",hi\nSay bye.,bye\n')
    evaluation = EvalConfig(max_rows=10, max_new_tokens=4, metric="exact_match", eval_file=str(own),
                            regression={"builtin": False})
    result = evaluate_checkpoint(tiny_model_cfg, None, Dataset.from_list(eval_rows), evaluation, "exact_match",
                                 "float32", 128)
    assert [s["prompt"] for s in result.samples] == ["Say hi,\nbriefly.", "Say bye."]
    assert "base_regression_score" not in result.metrics


def test_a_plain_text_run_scored_on_answers_is_refused_before_any_step():
    cfg = load_run_config_file(PROJECT / "configs" / "data_text.yaml")
    assert check_evaluation(cfg) == "perplexity"
    raw = cfg.model_dump(mode="json")
    raw["eval"]["metric"] = "json_exact_match"
    raw["data"]["path"] = str(PROJECT / raw["data"]["path"])
    with pytest.raises(ConfigError, match="scores generated answers, but the data is plain text"):
        check_evaluation(load_run_config(raw))
    raw["eval"]["metric"] = "auto"  # auto sees the rows are text
    assert check_evaluation(load_run_config(raw)) == "perplexity"
    assert load_run_config(raw).higher_is_better("finetuned_perplexity") is False


def test_a_gate_metric_the_evaluation_does_not_log_is_refused_before_any_step():
    cfg = load_run_config({"promotion": {"metric": "finetuned_rouge_l"}, "eval": {"metric": "json_exact_match"}})
    with pytest.raises(ConfigError, match="'finetuned_rouge_l' is not computed.*computed: base_perplexity"):
        check_evaluation(cfg)
    assert check_evaluation(load_run_config({"promotion": {"metric": "regression_drop"}})) == "json_exact_match"


@pytest.mark.parametrize("key", ["eval_file", "regression"])
def test_a_missing_evaluation_file_is_named(key):
    section = {"eval_file": "no/such.jsonl"} if key == "eval_file" else {"regression": {"file": "no/such.jsonl"}}
    with pytest.raises(ConfigError, match=rf"eval\.{'eval_file' if key == 'eval_file' else 'regression.file'}: "
                                          "file not found: no/such.jsonl"):
        check_evaluation(load_run_config({"eval": section}))
