"""The real default run, end to end: `zenml pipeline run` with configs/default.yaml on the embedded SmolLM2-135M
(QLoRA NF4 on this CPU), in an isolated repo; its champion served by `mlflow models serve`; then a fine-tune that breaks
the model, which the gate refuses.
Minutes, not seconds: marked slow."""

import json
import re
import shutil

import yaml

import mlflow
import pytest
from zenml.client import Client
from zenml.enums import ExecutionStatus

from llm_engineering.evaluation import generate
from llm_engineering.model.export import load_exported
from tests.pipeline_helpers import PROJECT, run_pipeline, setup_repo, write_config
from tests.ui_helpers import mlflow_model_server, post_json


@pytest.mark.slow
def test_default_pipeline_fine_tunes_the_embedded_model(tmp_path, monkeypatch):
    uri = setup_repo(tmp_path)
    shutil.copytree(PROJECT / "data", tmp_path / "data")  # the replay rows and the unseen eval file, as in a clone
    done = run_pipeline(tmp_path, PROJECT / "configs" / "default.yaml", timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    # the console a user reads: nobody's deprecations, and the run ends on our summary (ZenML's "finished" after it)
    console = done.stdout + done.stderr
    assert not re.search(r"FutureWarning|DeprecationWarning", console), console[-5000:]
    tail = console[console.rindex("Fine-tune finished: "):].split("=" * 78 + "\n", 1)
    assert "registry   models:/smollm2-booking/1 (alias champion: make serve)" in tail[0], tail[0]
    assert all(re.search(r"export_model\S* has finished|Pipeline run has finished", line)
               for line in tail[1].splitlines() if line.strip()), tail[1]

    client = mlflow.MlflowClient(tracking_uri=uri)
    [run] = client.search_runs([client.get_experiment_by_name("finetune").experiment_id])
    metrics = run.data.metrics
    print({k: v for k, v in metrics.items() if k.startswith(("base_", "finetuned_", "merge_", "train_tok", "regr"))})
    # the task learned on sentence shapes, names and restaurants training never showed (0.80-0.875 measured, by CPU; the
    # issue's 0.9 is not met, see README)...
    assert metrics["finetuned_json_exact_match"] >= 0.75 > metrics["base_json_exact_match"] + 0.5
    assert metrics["finetuned_stop_rate"] == 1.0  # EOS learned: every eval generation ended by itself
    # ...without breaking the general questions the base model answers (the probes are its own right answers)
    assert metrics["base_regression_score"] >= 0.9 and metrics["regression_drop"] <= 0.10
    assert metrics["merge_max_abs_logit_diff"] <= 1e-3
    [version] = client.search_model_versions("name='smollm2-booking'")
    # a fresh store has no champion: the first version becomes it, and production in ZenML's Model Control Plane
    assert client.get_model_version_by_alias("smollm2-booking", "champion").version == version.version
    monkeypatch.chdir(tmp_path)  # ZenML's client finds the repository from the working directory
    assert Client().get_model_version("smollm2-booking", "production").number == 1
    # MLflow's system metrics were sampled while the steps ran
    assert any(name.startswith("system/cpu_utilization") for name in metrics)
    assert "training/loss_curve.png" in [a.path for a in client.list_artifacts(run.info.run_id, "training")]
    # the data a user can inspect in MLflow: counts, length statistics, the histogram and the dataset input
    assert (metrics["data_train_rows"], metrics["data_rows_invalid"]) == (480 + 46 - 20, 0)  # booking + replay - eval
    assert 0 < metrics["data_train_trained_tokens"] < metrics["data_train_tokens_total"]
    assert "data/token_lengths.png" in [a.path for a in client.list_artifacts(run.info.run_id, "data")]
    [dataset_input] = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == "train" and len(dataset_input.dataset.digest) == 32

    model, tokenizer = load_exported(tmp_path / "outputs" / "smollm2-booking")
    request = "Book a table for two at Casa Verde on Friday at 19:30 under the name Lee."
    [(answer, stopped)] = generate(model, tokenizer, [[
        {"role": "system", "content": "Extract the booking as JSON with keys name, party_size, restaurant, day, time."},
        {"role": "user", "content": request}]], max_new_tokens=64, batch_size=1)
    assert stopped and json.loads(answer)["restaurant"] == "Casa Verde"

    # The champion served from the registry with MLflow's own server answers an OpenAI-style chat request exactly as
    # the export step's own greedy generation did (logged as serving_sample.json), through the chat template.
    sample = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/serving_sample.json")
    with mlflow_model_server("models:/smollm2-booking@champion", uri, tmp_path / "serve.log") as base:
        [completion] = post_json(f"{base}/invocations", {"messages": sample["messages"], "temperature": 0,
                                                         "max_tokens": sample["max_tokens"]})
    assert completion["object"] == "chat.completion" and completion["choices"][0]["finish_reason"] == "stop"
    assert completion["choices"][0]["message"] == {"role": "assistant", "content": sample["content"]}
    assert sample["stopped"] and json.loads(sample["content"])  # a booking, as JSON, ended by <|im_end|>
    assert 0 < completion["usage"]["completion_tokens"] < sample["max_tokens"]

    # A fine-tune that breaks the model (train.* changed: a learning rate fifty times too high; and GGUF files asked
    # for). The base model's evaluation comes from the cache; the broken version is registered as challenger, with the
    # regression as reason; its GGUF files reproduce it (f16: top-1 1.0; q8_0: top-1 >= 0.95).
    config = yaml.safe_load((PROJECT / "configs" / "default.yaml").read_text())
    config["parameters"]["config"]["train"].update(learning_rate=0.05, max_steps=4, checkpoint_steps=None,
                                                   eval_steps=4)
    config["parameters"]["config"]["export"]["gguf"] = ["f16", "q8_0"]
    broken = run_pipeline(tmp_path, write_config(tmp_path / "broken.yaml", config["parameters"]["config"],
                                                 model=config["model"]), timeout=1200)
    assert broken.returncode == 0, broken.stdout[-3000:] + broken.stderr[-5000:]
    steps = Client().get_pipeline("finetune").last_run.steps
    assert steps["evaluate_base"].status == ExecutionStatus.CACHED
    assert steps["evaluate_finetuned"].status == ExecutionStatus.COMPLETED
    decision = steps["export_model"].run_metadata
    print({k: v for k, v in decision.items() if k.startswith(("finetuned_", "regression", "promotion", "gguf_"))})
    assert decision["regression_drop"] > 0.10 and decision["promotion"] == "challenger"
    assert decision["gguf_f16_top1_agreement"] == 1.0 and decision["gguf_q8_0_top1_agreement"] >= 0.95
    export_dir = tmp_path / "outputs" / "smollm2-booking"
    assert {"model-f16.gguf", "model-q8_0.gguf", "Modelfile"} <= {p.name for p in export_dir.iterdir()}
    assert {"model-f16.gguf", "model-q8_0.gguf", "Modelfile"} <= {
        a.path.split("/")[-1] for a in client.list_artifacts(broken_run_id(client), "gguf")}
    assert decision["promotion_reason"].startswith("regression_drop") and "max_regression 0.1" in \
        decision["promotion_reason"]
    assert client.get_model_version_by_alias("smollm2-booking", "champion").version == version.version
    assert Client().get_model_version("smollm2-booking", "production").number == 1


def broken_run_id(client) -> str:
    experiment = client.get_experiment_by_name("finetune").experiment_id
    return client.search_runs([experiment], order_by=["attributes.start_time DESC"], max_results=1)[0].info.run_id
