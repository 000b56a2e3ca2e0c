"""Integration: the six-step pipeline through real ZenML (local orchestrator, SQL store) and real MLflow (SQLite
tracking store, model registry), on the tiny model, run with the `zenml pipeline run` CLI as a user would."""

import datetime
import json
import os
import re
import tempfile
from pathlib import Path

import mlflow
import pytest
from zenml.client import Client
from zenml.enums import ExecutionStatus

from llm_engineering.model.export import load_exported
from tests.pipeline_helpers import PROJECT, run_pipeline, setup_repo, tiny_parameters, write_config
from tests.ui_helpers import chromium, mlflow_server, zenml_dashboard

STEPS = ["load_dataset", "load_base_model", "inject_adapter", "train_sft", "merge_adapter", "evaluate_base",
         "evaluate_finetuned", "export_model"]


ZENML_MODEL = {"name": "tiny-booking", "license": "apache-2.0"}


def first_parameters(tiny_model_dir) -> dict:
    """The module's first run: the tiny defaults plus a local lm-evaluation-harness task (data/harness)."""
    parameters = tiny_parameters(tiny_model_dir)
    parameters["eval"]["harness"] = {"tasks": ["general_mc"], "include_path": "data/harness", "limit": 8}
    return parameters


@pytest.fixture(scope="module")
def repo(tmp_path_factory, tiny_model_dir):
    import shutil

    root = tmp_path_factory.mktemp("repo")
    uri = setup_repo(root)
    shutil.copytree(PROJECT / "data", root / "data")  # as in a clone: the task YAML names its file from the root
    config = write_config(root / "tiny.yaml", first_parameters(tiny_model_dir), model=ZENML_MODEL)
    first = run_pipeline(root, config)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-5000:]
    (root / "first-run.console").write_text(first.stdout + first.stderr)  # what the user saw
    return root, uri


def latest_run():
    return Client().get_pipeline("finetune").last_run


def test_every_step_ran_with_named_outputs_and_metadata(repo, monkeypatch):
    monkeypatch.chdir(repo[0])
    run = latest_run()
    assert run.status == ExecutionStatus.COMPLETED
    assert sorted(run.steps) == sorted(STEPS)
    assert set(run.steps["load_dataset"].outputs) == {"train_dataset", "eval_dataset", "data_summary"}
    assert set(run.steps["train_sft"].outputs) == {"trained_adapter", "training_metrics"}
    dataset_meta = run.steps["load_dataset"].run_metadata
    assert (dataset_meta["train_rows"], dataset_meta["eval_rows"]) == (36, 4)
    assert len(dataset_meta["fingerprint"]) == 64
    adapter_meta = run.steps["inject_adapter"].run_metadata
    assert 0 < adapter_meta["trainable_parameters"] < adapter_meta["total_parameters"]
    assert run.steps["load_base_model"].run_metadata["quantization"]["method"] == "4bit"
    assert run.steps["merge_adapter"].run_metadata["merge_max_abs_logit_diff"] <= 1e-4
    assert run.steps["export_model"].run_metadata["export_reload_max_abs_logit_diff"] == 0.0
    # checkpoints went to the artifact store during training and were removed once the adapter was stored
    assert run.steps["train_sft"].run_metadata["train_resumed_from_step"] == 0
    store = Path(Client().active_stack.artifact_store.path) / "sft-checkpoints"
    assert store.is_dir() and list(store.iterdir()) == []
    # the dataset is an HF dataset in Arrow, not a pickle
    assert run.steps["load_dataset"].outputs["train_dataset"][0].materializer.attribute == "DatasetMaterializer"


def test_mlflow_has_the_params_metrics_artifacts_and_registered_model(repo, monkeypatch):
    monkeypatch.chdir(repo[0])
    client = mlflow.MlflowClient(tracking_uri=repo[1])
    experiment = client.get_experiment_by_name("finetune")
    [mlflow_run] = client.search_runs([experiment.experiment_id], f'tags.mlflow.runName = "{latest_run().name}"')
    params, metrics = mlflow_run.data.params, mlflow_run.data.metrics
    assert params["adapter.r"] == "4" and params["model.quantization.method"] == "4bit"
    for name in ["train_loss", "train_learning_rate", "train_grad_norm", "eval_loss", "train_tokens_per_second",
                 "base_json_exact_match", "finetuned_json_exact_match", "merge_max_abs_logit_diff",
                 "base_perplexity", "finetuned_perplexity", "base_regression_score", "finetuned_regression_score",
                 "regression_drop", "step_seconds_evaluate_base", "step_seconds_evaluate_finetuned"]:
        assert name in metrics, name
    # lm-evaluation-harness on the merged model: the local task's accuracy over its 8 scored questions
    assert 0 <= metrics["harness_general_mc_acc"] <= 1 and (metrics["harness_general_mc_acc"] * 8).is_integer()
    assert len(client.get_metric_history(mlflow_run.info.run_id, "train_loss")) == 4  # one point per step
    throughput = client.get_metric_history(mlflow_run.info.run_id, "train_step_tokens_per_second")
    assert len(throughput) == 4 and all(point.value > 0 for point in throughput)
    artifacts = {a.path for a in client.list_artifacts(mlflow_run.info.run_id)}
    assert {"model_card.md", "run_config.yaml", "eval_samples.json", "merge_fidelity.json",
            "serving_sample.json"} <= artifacts
    assert "training/loss_curve.png" in {a.path for a in client.list_artifacts(mlflow_run.info.run_id, "training")}
    assert metrics["step_seconds_train_sft"] > 0 and "step_seconds_load_dataset" in metrics
    # the eval table pairs base and fine-tuned outputs, task rows and regression probes alike
    table = mlflow.artifacts.load_dict(f"{mlflow_run.info.artifact_uri}/eval_samples.json")
    rows = [dict(zip(table["columns"], values)) for values in table["data"]]
    assert {row["set"] for row in rows} == {"task", "regression"}
    assert all(isinstance(row["base_output"], str) and isinstance(row["finetuned_output"], str) for row in rows)
    assert client.get_model_version("tiny-booking", "1").tags["eval_fingerprint"]
    # lineage: the adapter and the exported (merged) model are logged models of the run
    logged = client.search_logged_models([experiment.experiment_id],
                                         filter_string=f"source_run_id = '{mlflow_run.info.run_id}'")
    by_name = {m.name: m for m in logged}
    assert set(by_name) == {"lora_adapter", "model"}
    adapter_files = {f.path for f in client.list_logged_model_artifacts(by_name["lora_adapter"].model_id)}
    assert "adapter_model.safetensors" in adapter_files and by_name["lora_adapter"].params["adapter.r"] == "4"
    assert mlflow_run.inputs.dataset_inputs[0].dataset.digest
    # linked both ways: the MLflow run names its ZenML run, the ZenML step names its MLflow run
    assert mlflow_run.data.tags["zenml.pipeline_run_id"] == str(latest_run().id)
    assert latest_run().steps["export_model"].run_metadata["mlflow_run_id"] == mlflow_run.info.run_id
    [version] = client.search_model_versions("name='tiny-booking'")
    assert version.run_id == mlflow_run.info.run_id
    # registered with MLflow's chat signature: a chat request in, an OpenAI-style completion out, the same greedy
    # answer the export step generated (the default pipeline's test asks a real `mlflow models serve`)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(repo[1])  # models:/ URIs resolve against the global tracking URI
    try:
        served = mlflow.pyfunc.load_model(f"models:/tiny-booking/{version.version}")
    finally:
        mlflow.set_tracking_uri(previous)
    sample = mlflow.artifacts.load_dict(f"{mlflow_run.info.artifact_uri}/serving_sample.json")
    [completion] = served.predict({"messages": sample["messages"], "max_tokens": sample["max_tokens"]})
    assert completion["choices"][0]["message"]["content"] == sample["content"]
    assert served.metadata.metadata["task"] == "llm/v1/chat"
    # the first version has nothing to beat: champion in MLflow, production in ZenML's Model Control Plane
    assert client.get_model_version_by_alias("tiny-booking", "champion").version == version.version
    assert metrics["promotion_promoted"] == 1.0
    zenml_version = Client().get_model_version("tiny-booking", "production")
    assert zenml_version.run_metadata["finetuned_json_exact_match"] == metrics["finetuned_json_exact_match"]
    assert zenml_version.get_artifact("trained_adapter") is not None  # the run's artifacts are linked to it
    assert str(latest_run().id) in {str(i) for i in zenml_version.pipeline_run_ids.values()}


def test_the_mlflow_ui_shows_the_params_the_loss_chart_and_the_champion(repo, tmp_path):
    """A user's view: `mlflow server` on loopback, the champion's run page in headless Chromium."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    root, uri = repo
    client = mlflow.MlflowClient(tracking_uri=uri)
    champion = client.get_model_version_by_alias("tiny-booking", "champion")
    run = client.get_run(champion.run_id)
    run_page = f"#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    shots = PROJECT / "outputs" / "ui-test"
    shots.mkdir(parents=True, exist_ok=True)
    with mlflow_server(uri, tmp_path / "mlflow-server.log") as base, chromium() as browser:
        wait = WebDriverWait(browser, 90)
        text = lambda: browser.find_element(By.TAG_NAME, "body").text  # noqa: E731

        browser.get(f"{base}/{run_page}")
        wait.until(lambda _: "adapter.r" in text())
        assert run.info.run_name in text() and "model.quantization.method" in text()
        browser.save_screenshot(str(shots / "run_overview.png"))

        browser.get(f"{base}/{run_page}/model-metrics")
        search = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "input[placeholder*='Search metric']"))
        search.send_keys("train_loss")

        def loss_line(driver):  # the train_loss chart drawn with all four logged points
            for line in driver.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .scatterlayer path.js-line"):
                if (line.get_attribute("d") or "").count("L") >= 3:
                    return line
            return None

        assert wait.until(loss_line)
        assert "train_loss" in text()
        browser.save_screenshot(str(shots / "run_loss_chart.png"))

        browser.get(f"{base}/#/models/tiny-booking")
        wait.until(lambda _: "@ champion" in text())
        assert f"Version {champion.version}" in text()
        browser.save_screenshot(str(shots / "registered_model.png"))


def test_the_zenml_dashboard_draws_the_run_and_the_loss_curve(repo, tmp_path, monkeypatch):
    """`make dashboard` over the run's store: the run's DAG with every step, and the training step's loss curve
    drawn from the training_metrics artifact's visualization, in headless Chromium."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    root, _ = repo
    monkeypatch.chdir(root)
    run = latest_run()
    shots = PROJECT / "outputs" / "ui-test"
    shots.mkdir(parents=True, exist_ok=True)
    with zenml_dashboard(root, tmp_path / "dashboard.log") as (base, printed), chromium() as browser:
        assert f"ZenML dashboard: {base}" in printed
        assert f"latest finetune run: {base}/projects/default/runs/{run.id}" in printed
        # the page re-renders as its queries come back: an element found a moment ago may be gone, so look again
        wait = WebDriverWait(browser, 120, ignored_exceptions=(StaleElementReferenceException,))

        def click(find):  # click what `find` returns, found afresh until the click lands
            wait.until(lambda d: find(d) and (find(d)[0].click() or True))

        browser.get(f"{base}/projects/default/runs/{run.id}")

        def nodes(driver):  # each step and artifact of the DAG is a node: its name, then its type
            return {n.text.split("\n")[0]: n for n in driver.find_elements(By.CSS_SELECTOR, ".react-flow__node")}

        wait.until(lambda d: set(STEPS) <= set(nodes(d)))
        browser.save_screenshot(str(shots / "zenml_run_dag.png"))

        click(lambda d: [node for name, node in nodes(d).items() if name == "training_metrics"])
        click(lambda d: [t for t in d.find_elements(By.CSS_SELECTOR, "[role=tab]") if t.text.strip() == "Visualization"][-1:])
        click(lambda d: [b for b in d.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Load Preview"])

        def loss_curve(driver):  # the PNG the training step stored, decoded by the browser
            for image in driver.find_elements(By.TAG_NAME, "img"):
                if (image.get_attribute("src") or "").startswith("data:image/png;base64,") and \
                        driver.execute_script("return arguments[0].naturalWidth", image) > 0:
                    return image
            return None

        assert wait.until(loss_curve)
        browser.save_screenshot(str(shots / "zenml_loss_curve.png"))
        server_log = tmp_path / "dashboard.log"
    assert "Traceback" not in server_log.read_text(), server_log.read_text()[-3000:]


def test_the_console_shows_each_stage_with_its_figure_and_ends_with_the_summary(repo, monkeypatch):
    root, uri = repo
    console = (root / "first-run.console").read_text()
    lines = console.splitlines()
    ended = [line for line in lines if re.match(r"\[\d/8\] .* done in [\d.]+s", line)]
    cached = [line for line in lines if re.match(r"\[\d/8\] .* cached \(", line)]  # other tests' runs share the store
    # every stage says how it ended, once: with its wall time, or that it came from the cache
    assert sorted(int(line[1]) for line in ended + cached) == list(range(1, 9)), console[-4000:]
    assert any(re.match(r"\[\d/8\] dataset done in .* 36 train \+ 4 eval rows of 40 read, 0 invalid", l) for l in ended)
    assert any(re.search(r"SFT training done in .* 4 steps, loss [\d.]+ -> [\d.]+, \d+ tokens/s", l) for l in ended)
    assert any(re.search(r"merge done in .* max \|Δlogit\| ", l) for l in ended)
    assert [line for line in lines if re.match(r"    training: +\d+% \(\d/4 step", line)]  # progress, as lines
    # nobody else's deprecations, nags or per-step INFO chatter
    for noise in ("FutureWarning", "DeprecationWarning", "Comet API Key", "Failed to disable MLflow autologging",
                  "system metrics", "Loading weights", "{'loss':", "Generating train split", "Saving the dataset"):
        assert noise not in console, noise
    # the closing summary: headline, export, registry, where to look
    summary = console[console.rindex("Fine-tune finished: "):]
    assert re.search(r"result +json_exact_match [\d.]+ -> [\d.]+, regression_drop -?[\d.]+, tiny-booking v1 "
                     r"@champion", summary), summary
    assert f"export     {(root / 'outputs' / 'tiny').resolve()}" in summary
    assert "registry   models:/tiny-booking/1 (alias champion: make serve)" in summary
    mlflow_run_id = re.search(r"MLflow +http://127\.0\.0\.1:5000/#/experiments/\d+/runs/([0-9a-f]{32})", summary)[1]

    # the MLflow run spans the pipeline run (its Duration is the pipeline's wall time, not one step's) and its
    # Description says what was fine-tuned and how it came out
    monkeypatch.chdir(root)
    zenml_run = Client().get_pipeline_run(re.search(r"Fine-tune finished: (\S+)", summary)[1])
    mlflow_run = mlflow.MlflowClient(tracking_uri=uri).get_run(mlflow_run_id)
    mlflow_start, mlflow_end = mlflow_run.info.start_time / 1000, mlflow_run.info.end_time / 1000
    # it opens during the first step that ran and closes no earlier than the last one starts (before every step was
    # tracked it began with the first tracked step: 124.9 s of a 132 s run); cached steps do not run, and other
    # tests' runs share the cache
    ran = sorted((s for s in zenml_run.steps.values() if s.status != ExecutionStatus.CACHED), key=lambda s: s.start_time)
    assert mlflow_start <= _epoch(ran[0].end_time), (ran[0].name, mlflow_start - _epoch(ran[0].end_time))
    assert mlflow_end >= _epoch(ran[-1].start_time), (ran[-1].name, _epoch(ran[-1].start_time) - mlflow_end)
    assert mlflow_end - mlflow_start <= (zenml_run.end_time - zenml_run.start_time).total_seconds() + 1
    description = mlflow_run.data.tags["mlflow.note.content"]
    assert "fine-tuned on **synthetic task** (messages, 36 train / 4 eval rows) with QLoRA r=4" in description
    assert "Result: json_exact_match" in description and "Gate: no champion yet" in description


def _epoch(moment: datetime.datetime) -> float:  # ZenML keeps UTC times without a zone
    return (moment if moment.tzinfo else moment.replace(tzinfo=datetime.timezone.utc)).timestamp()


def test_the_export_loads_with_plain_transformers_and_generates(repo):
    from llm_engineering.model.export import verify_manifest

    export_dir = repo[0] / "outputs" / "tiny"
    assert (export_dir / "README.md").read_text().startswith("---\nbase_model:")
    assert (export_dir / "adapter" / "adapter_model.safetensors").is_file() and verify_manifest(export_dir) == []
    model, tokenizer = load_exported(export_dir)
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]
    # the saved tokenizer pads only when asked (transformers 5 would keep the merge step's padding=True in it)
    assert [len(ids) for ids in tokenizer(["hi", "a much longer sentence than that"])["input_ids"]] == [1, 6]


def test_changing_only_training_hyperparameters_reuses_the_cached_steps(repo, tiny_model_dir, monkeypatch):
    root, _ = repo
    config = write_config(root / "tiny-lr.yaml", tiny_parameters(tiny_model_dir, learning_rate=1e-3), model=ZENML_MODEL)
    second = run_pipeline(root, config)
    assert second.returncode == 0, second.stderr[-5000:]
    for cached in ("dataset", "base model", "LoRA adapter", "evaluate base"):  # said so, one line each
        assert len(re.findall(rf"^\[\d/8\] {cached} cached", second.stderr, re.M)) == 1, second.stderr[-3000:]
    monkeypatch.chdir(root)
    steps = latest_run().steps
    assert {name: steps[name].status for name in STEPS[:3]} == {name: ExecutionStatus.CACHED for name in STEPS[:3]}
    assert steps["train_sft"].status == ExecutionStatus.COMPLETED
    # the base model is scored once: same base, same eval rows, same settings; the new fine-tune is scored again
    assert (steps["evaluate_base"].status, steps["evaluate_finetuned"].status) == (ExecutionStatus.CACHED,
                                                                                  ExecutionStatus.COMPLETED)
    # the second version went through the gate against the first: aliases and stages follow its decision
    client = mlflow.MlflowClient(tracking_uri=repo[1])
    metric = "finetuned_json_exact_match"
    first, second = sorted(client.search_model_versions("name='tiny-booking'"), key=lambda v: int(v.version))
    scores = [client.get_run(v.run_id).data.metrics[metric] for v in (first, second)]
    promoted = scores[1] > scores[0]
    champion = client.get_model_version_by_alias("tiny-booking", "champion").version
    assert champion == (second.version if promoted else first.version)
    assert second.tags["promotion"] == ("champion" if promoted else "challenger")
    zenml_versions = {int(v.number): v.stage for v in Client().list_model_versions(model="tiny-booking", size=10)}
    assert zenml_versions[2] == ("production" if promoted else "staging")


def test_an_identical_rerun_takes_every_step_from_the_cache_but_exports_again(repo, tiny_model_dir, monkeypatch):
    """A second clone or a deleted outputs/ must still get its export: the export step never comes from the cache."""
    import shutil

    root, _ = repo
    shutil.rmtree(root / "outputs" / "tiny")
    config = write_config(root / "tiny-again.yaml", first_parameters(tiny_model_dir), model=ZENML_MODEL)
    done = run_pipeline(root, config)
    assert done.returncode == 0, done.stderr[-5000:]
    monkeypatch.chdir(root)
    steps = latest_run().steps
    assert {name: steps[name].status for name in STEPS[:-1]} == {name: ExecutionStatus.CACHED for name in STEPS[:-1]}
    assert steps["export_model"].status == ExecutionStatus.COMPLETED
    assert (root / "outputs" / "tiny" / "SHA256SUMS").is_file()


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


def test_setup_is_idempotent(repo, monkeypatch):
    root, uri = repo
    assert setup_repo(root) == uri  # a second set-up succeeds and changes nothing
    monkeypatch.chdir(root)
    client = Client()
    assert client.active_stack_model.name == "llm_engineering_local"
    assert [c.name for c in client.list_stack_components(type="experiment_tracker")] == ["mlflow_tracker"]


PLANTED = {"HF_TOKEN": "hf_plantedSecretToken0123456789", "COMET_API_KEY": "cometPlantedSecret0123456789"}


def test_a_failed_step_keeps_earlier_work_and_the_rerun_continues_from_it_without_leaking_secrets(
        repo, tiny_model_dir, monkeypatch):
    root, uri = repo
    parameters = tiny_parameters(tiny_model_dir, learning_rate=4e-3)
    parameters["export"] = {"output_dir": "outputs/tiny-retry", "registered_model_name": "tiny-retry"}
    parameters["merge"]["max_logit_diff"] = 1e-12  # no merge is that exact: the merge step fails
    scratch = Path(tempfile.gettempdir())
    before = set(scratch.glob("merged-model-*"))
    failed = run_pipeline(root, write_config(root / "strict.yaml", parameters), env=PLANTED)
    assert failed.returncode != 0 and "nothing was exported" in failed.stdout + failed.stderr
    assert set(scratch.glob("merged-model-*")) == before  # the failed step's scratch output was removed
    assert not (root / "outputs" / "tiny-retry").exists()
    assert mlflow.MlflowClient(tracking_uri=uri).search_model_versions("name='tiny-retry'") == []

    parameters["merge"]["max_logit_diff"] = 1e-4
    fixed = run_pipeline(root, write_config(root / "fixed.yaml", parameters), env=PLANTED)
    assert fixed.returncode == 0, fixed.stderr[-5000:]
    monkeypatch.chdir(root)
    steps = latest_run().steps
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


def test_a_pipeline_killed_mid_training_resumes_on_rerun(repo, tiny_model_dir, monkeypatch):
    import signal
    import subprocess
    import time

    from llm_engineering.model.training import last_checkpoint
    from tests.pipeline_helpers import ZENML

    root, uri = repo
    parameters = tiny_parameters(tiny_model_dir, learning_rate=3e-3)
    parameters["train"].update(max_steps=40, checkpoint_steps=5, eval_steps=40)
    parameters["export"] = {"output_dir": "outputs/tiny-resume", "registered_model_name": "tiny-resume"}
    config = write_config(root / "resume.yaml", parameters)
    monkeypatch.chdir(root)
    checkpoints = Path(Client().active_stack.artifact_store.path) / "sft-checkpoints"

    child = subprocess.Popen([ZENML, "pipeline", "run", "pipelines.finetune.finetune", "--config", str(config)],
                             cwd=root, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and child.poll() is None and not any(
            last_checkpoint(d) for d in (checkpoints.iterdir() if checkpoints.is_dir() else [])):
        time.sleep(0.2)
    os.killpg(child.pid, signal.SIGKILL)  # the whole process group, no clean-up: a preempted machine
    child.wait()
    assert child.returncode == -signal.SIGKILL

    rerun = run_pipeline(root, config)
    assert rerun.returncode == 0, rerun.stderr[-5000:]
    assert "Resuming training from" in rerun.stdout + rerun.stderr
    steps = latest_run().steps
    resumed = steps["train_sft"].run_metadata["train_resumed_from_step"]
    assert 5 <= resumed < 40 and resumed % 5 == 0
    assert {n: steps[n].status for n in STEPS[:3]} == {n: ExecutionStatus.CACHED for n in STEPS[:3]}
    client = mlflow.MlflowClient(tracking_uri=uri)
    [mlflow_run] = client.search_runs([client.get_experiment_by_name("finetune").experiment_id],
                                      f'tags.mlflow.runName = "{latest_run().name}"')
    assert mlflow_run.data.metrics["train_resumed_from_step"] == resumed


PREFERENCE_STEPS = {"load_dataset", "chosen_conversations", "load_base_model", "start_adapter", "train_preference",
                    "merge_adapter", "merge_start", "evaluate_base", "evaluate_start", "evaluate_finetuned",
                    "export_model"}


def errors(done) -> str:  # the lines of a failed run that say why
    return "\n".join(line for line in (done.stdout + done.stderr).splitlines()
                     if "Error" in line or "FAILED" in line or "failed" in line)


def preference_parameters(tiny_model_dir, start_adapter) -> dict:
    parameters = tiny_parameters(tiny_model_dir)
    parameters["data"] = {"source": "synthetic", "task": "booking_preference", "num_rows": 24, "eval_rows": 8}
    # prompt + the longer answer: made-up names run to many tokens, past the tiny runs' 128
    parameters["train"].update(max_steps=4, eval_steps=4, checkpoint_steps=None, max_length=192)
    parameters["preference"] = {"method": "dpo", "beta": 0.1, "start_adapter": start_adapter}
    parameters["export"] = {"output_dir": "outputs/tiny-dpo", "registered_model_name": "tiny-booking-dpo"}
    parameters["eval"] = {"max_rows": 4, "max_new_tokens": 8, "batch_size": 4}
    return parameters


def test_dpo_from_the_registered_sft_champion_runs_every_stage_and_tracks_the_rewards(repo, tiny_model_dir,
                                                                                        monkeypatch):
    root, uri = repo
    config = write_config(root / "dpo.yaml", preference_parameters(tiny_model_dir, "models:/tiny-booking@champion"),
                          model={"name": "tiny-booking-dpo"})
    done = run_pipeline(root, config, pipeline="pipelines.preference.preference")
    console = done.stdout + done.stderr
    assert done.returncode == 0, errors(done)
    assert re.search(r"preference training done in .* 4 steps, loss [\d.]+ -> [\d.]+, held-out reward accuracy "
                     r"[\d.]+", console), console[-3000:]
    assert re.search(r"json_exact_match [\d.]+ -> [\d.]+ -> [\d.]+, .*tiny-booking-dpo v1 @champion", console)

    monkeypatch.chdir(root)
    run = Client().get_pipeline("preference").last_run
    assert set(run.steps) == PREFERENCE_STEPS  # no fresh adapter: it starts from the champion's
    # the start adapter is the SFT champion's trained adapter, byte for byte (found through ZenML, not the registry)
    client = mlflow.MlflowClient(tracking_uri=uri)
    champion = client.get_model_version_by_alias("tiny-booking", "champion")
    sft_run = Client().get_pipeline_run(client.get_run(champion.run_id).data.tags["zenml.pipeline_run_id"])
    sft_adapter = sft_run.steps["train_sft"].outputs["trained_adapter"][0].load().path
    start = run.steps["start_adapter"].outputs["initial_adapter"][0].load().path
    assert (start / "adapter_model.safetensors").read_bytes() == (sft_adapter / "adapter_model.safetensors").read_bytes()

    # MLflow: reward curves per logging step, the held-out reward accuracy, and base / start / tuned side by side
    [tracked] = client.search_runs([client.get_experiment_by_name("preference").experiment_id],
                                   f'tags.mlflow.runName = "{run.name}"')
    for curve in ("train_rewards/accuracies", "train_rewards/margins", "train_rewards/chosen", "train_rewards/rejected"):
        assert [m.step for m in client.get_metric_history(tracked.info.run_id, curve)] == [1, 2, 3, 4], curve
    assert 0.0 <= tracked.data.metrics["pref_eval_reward_accuracies"] <= 1.0
    assert tracked.info.artifact_uri.startswith((root / ".mlflow" / "artifacts").resolve().as_uri())  # not ./mlruns
    assert not (root / "mlruns").exists()
    for role in ("base", "start", "finetuned"):
        assert f"{role}_json_exact_match" in tracked.data.metrics, role
    table = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=tracked.info.run_id,
                                                                artifact_path="eval_samples.json",
                                                                tracking_uri=uri)).read_text())
    assert {"base_output", "start_output", "finetuned_output"} <= set(table["columns"])
    assert str(client.get_model_version_by_alias("tiny-booking-dpo", "champion").version) == "1"


def test_bad_preference_input_stops_the_run_before_any_model_loads(repo, tiny_model_dir, monkeypatch):
    root, _ = repo
    pairs = root / "pairs.jsonl"
    good = {"prompt": "Book a table for 2 at Nobu", "chosen": '{"party": 2}', "rejected": '{"party": "2"}'}
    pairs.write_text(json.dumps(good) + "\n" + json.dumps({**good, "rejected": good["chosen"]}) + "\n")
    parameters = preference_parameters(tiny_model_dir, None)
    parameters["data"] = {"source": "file", "path": str(pairs), "eval_rows": 1}
    failed = run_pipeline(root, write_config(root / "bad-pairs.yaml", parameters),
                          pipeline="pipelines.preference.preference")
    assert failed.returncode != 0
    assert "pairs.jsonl: 1 of 2 rows are invalid (format preference)" in failed.stderr, errors(failed)
    assert "line 2: 'chosen' and 'rejected' are the same response" in failed.stderr, errors(failed)
    monkeypatch.chdir(root)
    assert "load_base_model" not in Client().get_pipeline("preference").last_run.steps

    # a start adapter that is not there is named when the pipeline compiles (the check `zenml pipeline run` makes)
    from llm_engineering.orchestration.start_adapter import check_start_adapter_source

    for start, says in (("models:/no-such-model@champion", "versions of no-such-model: none"),
                        ("models:/tiny-booking/99", "versions of tiny-booking: 1 (champion)"),
                        ("zenml:trained_adapter:999", "no artifact version 999 of trained_adapter"),
                        (str(root), "holds no PEFT adapter (missing adapter_config.json")):
        with pytest.raises(ValueError, match=re.escape(says)) as refused:
            check_start_adapter_source(start)
        assert str(refused.value).startswith(f"preference.start_adapter {start!r}")

    # SFT rows given to the preference pipeline are named, with the pipeline to use instead
    parameters = preference_parameters(tiny_model_dir, None)
    parameters["data"] = {"source": "synthetic", "num_rows": 8, "eval_rows": 2}
    wrong = run_pipeline(root, write_config(root / "sft-rows.yaml", parameters),
                         pipeline="pipelines.preference.preference")
    assert wrong.returncode != 0 and "run pipelines.finetune.finetune" in " ".join(wrong.stderr.split()), errors(wrong)
