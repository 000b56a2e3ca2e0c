"""Comet through ZenML's experiment-tracker interface, offline: the pipeline runs on a stack whose tracker is our Comet
flavor, and Comet's offline archives (what `comet upload` would send) hold the run's parameters and metrics."""

import json
import sys
import zipfile

from tests.pipeline_helpers import run, run_pipeline, tiny_parameters, write_config


def archive_messages(archive) -> list[dict]:
    with zipfile.ZipFile(archive) as bundle:
        lines = bundle.read("messages.json").decode().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_the_pipeline_tracked_by_comet_offline_writes_archives_with_its_metrics(fresh_repo, family_checkpoint):
    tmp_path, _, own_store = fresh_repo  # the Comet stack stays out of other tests' store
    offline = tmp_path / "comet-archives"
    done = run([sys.executable, "-m", "llm_engineering.orchestration.stack", "--comet-offline", str(offline)],
               tmp_path, 300, own_store)
    assert done.returncode == 0 and "llm_engineering_comet" in done.stdout, done.stdout + done.stderr
    # Gemma 3 (q/k norms, sliding windows, tied): the family's run of the whole pipeline (see test_shipped_configs.py)
    parameters = tiny_parameters(family_checkpoint("gemma3"))
    parameters["train"]["max_length"] = 256  # its 2,000-piece SentencePiece vocabulary takes more tokens per row
    parameters["export"]["registered_model_name"] = None  # the model registry is MLflow's; Comet tracks metrics
    finished = run_pipeline(tmp_path, write_config(tmp_path / "comet.yaml", parameters), env=own_store)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-5000:]

    archives = sorted(offline.glob("*.zip"))
    assert len(archives) == 8  # one Comet experiment per step (all are tracked: MLflow's run spans the pipeline)
    messages = [m for archive in archives for m in archive_messages(archive)]
    metrics = {}
    for message in messages:
        if message.get("type") == "metric_msg":
            metric = message["payload"]["metric"]
            metrics.setdefault(metric["metricName"], []).append(float(metric["metricValue"]))
    assert len(metrics["train_loss"]) == 4  # streamed once per logging step by the trainer callback
    for name in ["eval_loss", "train_tokens_per_second", "data_train_rows", "merge_max_abs_logit_diff",
                 "finetuned_json_exact_match", "base_json_exact_match"]:
        assert name in metrics, name
    assert metrics["data_train_rows"] == [36.0]
    params = {m["payload"]["param"]["paramName"]: m["payload"]["param"]["paramValue"]
              for m in messages if m.get("type") == "parameter_msg"}
    assert params["adapter.r"] == "4"
