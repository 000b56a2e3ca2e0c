"""Integration: the pipeline's failure paths through real ZenML (local orchestrator, SQL store) and real MLflow (SQLite
tracking store, model registry), on the tiny model, in the session's shared repository: a bad config, a failed step
and its rerun, an identical rerun, bad preference input. A killed run and its resume: tests/test_object_store.py.
What a successful run shows (console, steps, MLflow, registry, UIs, cached rerun, DPO from the champion) is checked
on the real default run: tests/test_default_pipeline.py."""

import json
import os
import re
import tempfile
from pathlib import Path

import mlflow
import pytest
from zenml.client import Client
from zenml.enums import ExecutionStatus

from llm_engineering.model.start_adapter import ADAPTER_FILES, fetch_start_adapter
from tests.pipeline_helpers import StepFailed, run_in_process, run_pipeline, setup_repo, tiny_parameters, write_config

STEPS = ["load_dataset", "load_base_model", "inject_adapter", "train_sft", "merge_adapter", "evaluate_base",
         "evaluate_finetuned", "export_model"]


@pytest.fixture
def repo(shared_repo, monkeypatch):
    shared_repo.activate()
    monkeypatch.chdir(shared_repo.root)
    return shared_repo


def latest_run():
    return Client().get_pipeline("finetune").last_run


def test_a_bad_config_fails_before_any_step_runs(repo, tiny_model_dir, monkeypatch):
    root, _ = repo
    monkeypatch.chdir(root)
    runs_before = len(Client().list_pipeline_runs(size=100))
    parameters = tiny_parameters(tiny_model_dir)
    parameters["adapter"]["rank"] = 8
    parameters["train"]["max_steps"] = 0
    failed = run_pipeline(root, write_config(root / "bad.yaml", parameters))
    assert failed.returncode != 0
    output = failed.stdout + failed.stderr
    assert "adapter.rank: unknown key" in output and "train.max_steps = 0" in output
    assert len(Client().list_pipeline_runs(size=100)) == runs_before
    # the console ends with our message alone, not under ZenML's boxed traceback of its own call stack
    assert "Traceback" not in output and "click/core.py" not in output, output[-3000:]
    block = output[output.index("Run stopped:"):].rstrip().splitlines()
    assert block[1] == "  ConfigError: invalid run config (2 problems):" and block[-1] == "=" * 78, output[-3000:]
    assert any("adapter.rank: unknown key" in line for line in block[2:4]), output[-3000:]


def test_setup_is_idempotent(repo, monkeypatch):
    root, uri = repo
    assert setup_repo(root) == uri  # a second set-up succeeds and changes nothing
    monkeypatch.chdir(root)
    client = Client()
    assert client.active_stack_model.name == "llm_engineering_local"
    assert [c.name for c in client.list_stack_components(type="experiment_tracker")] == ["mlflow_tracker"]


PLANTED = {"HF_TOKEN": "hf_plantedSecretToken0123456789", "COMET_API_KEY": "cometPlantedSecret0123456789"}


@pytest.fixture(scope="module")
def retried(shared_repo, tiny_model_dir):
    """A run whose merge step fails (a fidelity threshold no merge meets), then the same run with it fixed, both with
    credentials in the environment; registers tiny-retry v1."""
    root, uri = shared_repo
    shared_repo.activate()
    parameters = tiny_parameters(tiny_model_dir, learning_rate=4e-3)
    parameters["export"] = {"output_dir": "outputs/tiny-retry", "registered_model_name": "tiny-retry"}
    parameters["merge"]["max_logit_diff"] = 1e-12  # no merge is that exact: the merge step fails
    scratch = Path(tempfile.gettempdir())
    before = set(scratch.glob("merged-model-*"))
    failed = run_pipeline(root, write_config(root / "strict.yaml", parameters), env=PLANTED)
    assert failed.returncode != 0 and "nothing was exported" in failed.stdout + failed.stderr
    # the console ends with the reason, not with ZenML's tracebacks of its own call stack
    console = (failed.stdout + failed.stderr).strip()
    assert "Traceback" not in console and "╭─" not in console, console[-3000:]
    block = console[console.rindex("Run failed: finetune-"):].splitlines()
    assert block[1].startswith("  failed     merge_adapter: ") and "nothing was exported" in block[1]
    assert block[-2].startswith("  traceback  make dashboard") and block[-1] == "=" * 78
    assert set(scratch.glob("merged-model-*")) == before  # the failed step's scratch output was removed
    assert not (root / "outputs" / "tiny-retry").exists()
    assert mlflow.MlflowClient(tracking_uri=uri).search_model_versions("name='tiny-retry'") == []

    parameters["merge"]["max_logit_diff"] = 1e-4
    fixed_config = write_config(root / "fixed.yaml", parameters)
    fixed = run_pipeline(root, fixed_config, env=PLANTED)
    assert fixed.returncode == 0, fixed.stderr[-5000:]
    return failed, fixed, fixed_config, latest_run()


def test_a_failed_step_keeps_earlier_work_and_the_rerun_continues_from_it_without_leaking_secrets(
        repo, retried, monkeypatch):
    root, uri = repo
    failed, fixed, _, fixed_run = retried
    steps = fixed_run.steps
    assert {n: steps[n].status for n in STEPS[:4]} == {n: ExecutionStatus.CACHED for n in STEPS[:4]}
    assert steps["merge_adapter"].status == ExecutionStatus.COMPLETED
    assert (root / "outputs" / "tiny-retry" / "SHA256SUMS").is_file()

    # credentials come from the environment only: none reaches MLflow, ZenML's store, logs, artifacts or the export
    searched = [root, Path(os.environ["ZENML_CONFIG_PATH"])]
    for secret in PLANTED.values():
        for top in searched:
            hits = [p for p in top.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
            assert hits == [], f"{secret} found in {hits}"
        assert secret not in failed.stdout + failed.stderr + fixed.stdout + fixed.stderr


def test_an_identical_rerun_takes_every_step_from_the_cache_but_exports_again(repo, retried, tmp_path):
    """A second clone or a deleted outputs/ must still get its export: the export step never comes from the cache."""
    import shutil

    root, uri = repo
    shutil.rmtree(root / "outputs" / "tiny-retry")
    steps = run_in_process(repo, retried[2]).steps
    assert {name: steps[name].status for name in STEPS[:-1]} == {name: ExecutionStatus.CACHED for name in STEPS[:-1]}
    assert steps["export_model"].status == ExecutionStatus.COMPLETED
    assert (root / "outputs" / "tiny-retry" / "SHA256SUMS").is_file()
    # the version this run registered carries the adapter its cached training made: a preference run starts from it
    fetched = {version: fetch_start_adapter(f"models:/tiny-retry/{version}", tmp_path / version, uri)
               for version in ("1", "2")}
    assert [(fetched["2"] / name).read_bytes() for name in ADAPTER_FILES] == \
        [(fetched["1"] / name).read_bytes() for name in ADAPTER_FILES]


def preference_parameters(tiny_model_dir, start_adapter) -> dict:
    parameters = tiny_parameters(tiny_model_dir)
    parameters["data"] = {"source": "synthetic", "task": "booking_preference", "num_rows": 24, "eval_rows": 8}
    # prompt + the longer answer: made-up names run to many tokens, past the tiny runs' 128
    parameters["train"].update(max_steps=4, eval_steps=4, checkpoint_steps=None, max_length=192)
    parameters["preference"] = {"method": "dpo", "beta": 0.1, "start_adapter": start_adapter}
    parameters["export"] = {"output_dir": "outputs/tiny-dpo", "registered_model_name": "tiny-booking-dpo"}
    parameters["eval"] = {"max_rows": 4, "max_new_tokens": 8, "batch_size": 4}
    return parameters


def test_bad_preference_input_stops_the_run_before_any_model_loads(repo, retried, tiny_model_dir):
    root, _ = repo
    pairs = root / "pairs.jsonl"
    good = {"prompt": "Book a table for 2 at Nobu", "chosen": '{"party": 2}', "rejected": '{"party": "2"}'}
    pairs.write_text(json.dumps(good) + "\n" + json.dumps({**good, "rejected": good["chosen"]}) + "\n")
    parameters = preference_parameters(tiny_model_dir, None)
    parameters["data"] = {"source": "file", "path": str(pairs), "eval_rows": 1}
    with pytest.raises(StepFailed) as failed:
        run_in_process(repo, write_config(root / "bad-pairs.yaml", parameters), "pipelines.preference.preference")
    assert "pairs.jsonl: 1 of 2 rows are invalid (format preference)" in str(failed.value)
    assert "line 2: 'chosen' and 'rejected' are the same response" in str(failed.value)
    assert "load_base_model" not in Client().get_pipeline("preference").last_run.steps

    # a start adapter that is not there is named when the pipeline compiles (the check `zenml pipeline run` makes)
    from llm_engineering.orchestration.start_adapter_lookup import check_start_adapter_source

    for start, says in (("models:/no-such-model@champion", "versions of no-such-model: none"),
                        ("models:/tiny-retry/99", "versions of tiny-retry: 1 (champion)"),
                        ("zenml:trained_adapter:999", "no artifact version 999 of trained_adapter"),
                        (str(root), "holds no PEFT adapter (missing adapter_config.json")):
        with pytest.raises(ValueError, match=re.escape(says)) as refused:
            check_start_adapter_source(start)
        assert str(refused.value).startswith(f"preference.start_adapter {start!r}")

    # SFT rows given to the preference pipeline are named, with the pipeline to use instead
    parameters = preference_parameters(tiny_model_dir, None)
    parameters["data"] = {"source": "synthetic", "num_rows": 8, "eval_rows": 2}
    with pytest.raises(Exception) as wrong:  # refused when it compiles or by the dataset step
        run_in_process(repo, write_config(root / "sft-rows.yaml", parameters), "pipelines.preference.preference")
    assert "run pipelines.finetune.finetune" in " ".join(str(wrong.value).split())


def test_orpo_on_a_chat_export_with_long_prompts_trains_every_pair_when_truncation_is_on(repo, tiny_model_dir, capfd):
    """ShareGPT pairs whose prompts run past train.max_length (earlier exchanges, pasted e-mail threads), with
    data.truncate: every pair is kept with its prompt cut from the start, and no later step refuses one of them."""
    root, _ = repo
    parameters = preference_parameters(tiny_model_dir, None)
    parameters["data"] = {"source": "file", "eval_rows": 4, "truncate": True, "on_invalid": "skip",
                          "path": str(Path(__file__).parent.parent / "data/samples/preference_sharegpt_long.json")}
    parameters["train"].update(max_steps=2, eval_steps=2, max_length=160)
    parameters["preference"] = {"method": "orpo", "beta": 0.1}
    parameters["export"] = {"output_dir": "outputs/tiny-orpo-long", "registered_model_name": None}
    run = run_in_process(repo, write_config(root / "orpo-long.yaml", parameters), "pipelines.preference.preference")
    assert run.status == ExecutionStatus.COMPLETED  # (the base model's step may come from the cache)
    assert run.steps["chosen_conversations"].status == ExecutionStatus.COMPLETED
    summary = run.steps["load_dataset"].outputs["data_summary"][0].load()
    assert (summary["rows_read"], summary["rows_invalid"]) == (30, 0) and summary["rows_truncated"] >= 10
    eval_rows = run.steps["chosen_conversations"].outputs["eval_conversations"][0].load()
    assert len(eval_rows) == 4  # the held-out pairs' chosen answers, cut as the dataset step cut them
    assert "remove_unused_columns" not in "".join(capfd.readouterr())  # TRL's advice to us, not to the user
