"""The dataset step inside real `zenml pipeline run`s: an edited data file is read again (ZenML's cache key sees
parameters, not file contents) and an unchanged one comes from the cache, as does the base model's evaluation when
only the training rows changed. The shipped data configs run end to end in tests/test_shipped_configs.py."""

import json

import pytest
from zenml.client import Client
from zenml.enums import ExecutionStatus

from llm_engineering.data.synthetic import booking_rows
from tests.pipeline_helpers import StepFailed, run_in_process, tiny_parameters, write_config

ZENML_MODEL = {"name": "tiny-data", "license": "apache-2.0"}


@pytest.fixture
def repo(shared_repo):
    return shared_repo


def parameters(tiny_model_dir, data: dict) -> dict:
    params = tiny_parameters(tiny_model_dir)
    params["data"] = data
    params["train"].update(max_steps=2, eval_steps=2, checkpoint_steps=None)
    params["export"]["registered_model_name"] = None
    return params


def trained_answers(steps) -> set[str]:
    rows = steps["load_dataset"].outputs["train_dataset"][0].load()
    return {r["messages"][-1]["content"] for r in rows}


def test_an_edited_data_file_is_read_again_and_an_unchanged_one_comes_from_the_cache(repo, tiny_model_dir,
                                                                                     monkeypatch):
    data = repo.root / "my-data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in booking_rows(24, seed=1)))
    params = parameters(tiny_model_dir, {"source": "file", "path": str(data), "eval_rows": 4})
    # scored on a file of its own with a named metric: the training rows are not in the evaluations' cache key
    params["eval"].update(eval_file="data/samples/booking_unseen.jsonl", metric="json_exact_match")
    config = write_config(repo.root / "file.yaml", params, model=ZENML_MODEL)
    before = trained_answers(run_in_process(repo, config).steps)

    edited = booking_rows(24, seed=1)
    for row in edited:  # every answer changes, as a user fixing their labels would
        row["messages"][-1]["content"] = row["messages"][-1]["content"].replace('"name"', '"guest"')
    data.write_text("".join(json.dumps(r) + "\n" for r in edited))
    steps = run_in_process(repo, config).steps
    assert steps["load_dataset"].status == ExecutionStatus.COMPLETED
    assert steps["load_base_model"].status == ExecutionStatus.CACHED
    # the base model's answers come from the cache; the new fine-tune is scored again
    assert (steps["evaluate_base"].status, steps["evaluate_finetuned"].status) == (ExecutionStatus.CACHED,
                                                                                  ExecutionStatus.COMPLETED)
    after = trained_answers(steps)
    assert after and not after & before and all('"guest"' in answer for answer in after)

    steps = run_in_process(repo, config).steps
    assert steps["load_dataset"].status == ExecutionStatus.CACHED
    assert trained_answers(steps) == after

    # a row cut off mid-line (a copy interrupted): the dataset step names it, and no model is loaded for that run
    data.write_text(data.read_text() + '{"messages": [{"role": "user", "content": "Book for two at 7\n')
    with pytest.raises(StepFailed, match=r"my-data.jsonl.* line 25"):
        run_in_process(repo, config)
    failed = Client().get_pipeline("finetune").last_run.steps
    assert failed["load_dataset"].status == ExecutionStatus.FAILED and "load_base_model" not in failed
