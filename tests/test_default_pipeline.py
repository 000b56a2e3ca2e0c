"""The real default run, end to end, and everything a user checks on it: `zenml pipeline run` with configs/default.yaml
on the embedded SmolLM2-135M (QLoRA NF4 on this CPU), run once per session (conftest's `default_run`, in the shared
repository) and read by every test here: the console, the steps and their metadata, MLflow (params, metrics,
artifacts, lineage, the registry), the MLflow UI and ZenML's dashboard in Chromium, the export, `mlflow models serve`;
then a rerun with only `train.*` changed (a learning rate that breaks the model, GGUF files and the lm-eval harness
asked for), which the cache and the gate must handle; then DPO (configs/dpo.yaml, 2 steps) from its champion, in this
process (the CLI path is the default run's).
Minutes, not seconds."""

import datetime
import json
import re
from pathlib import Path

import mlflow
import pytest
import yaml
from zenml.client import Client
from zenml.enums import ExecutionStatus

from llm_engineering.evaluation import generate
from llm_engineering.export.export_dir import load_exported
from tests.pipeline_helpers import PROJECT, run_in_process, run_pipeline, write_config
from tests.ui_helpers import chromium, mlflow_model_server, mlflow_server, post_json, zenml_dashboard

STEPS = ["load_dataset", "load_base_model", "inject_adapter", "train_sft", "merge_adapter", "evaluate_base",
         "evaluate_finetuned", "export_model"]
NAME = "smollm2-booking"
SHOTS = PROJECT / "outputs" / "ui-test"


def zenml_run(default_run):
    return Client().get_pipeline_run(default_run["run_id"])


def mlflow_run_of(uri: str, zenml_run_name: str, experiment: str = "finetune"):
    client = mlflow.MlflowClient(tracking_uri=uri)
    [run] = client.search_runs([client.get_experiment_by_name(experiment).experiment_id],
                               f'tags.mlflow.runName = "{zenml_run_name}"')
    return run


def test_the_default_run_learns_the_task_and_the_gate_follows_its_own_rule(default_run):
    uri = default_run["uri"]
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = mlflow_run_of(uri, zenml_run(default_run).name)
    metrics = run.data.metrics
    print({k: v for k, v in metrics.items() if k.startswith(("base_", "finetuned_", "merge_", "train_tok", "regr",
                                                             "general"))})
    # the task learned on sentence shapes, names and restaurants training never showed: a floor well below the
    # minimum measured over seeds and both precisions (bench/results/default_seeds.json), on 100 unseen rows
    assert metrics["finetuned_json_exact_match"] >= 0.6 > 0.2 > metrics["base_json_exact_match"]
    assert metrics["finetuned_json_exact_match_ci_low"] < metrics["finetuned_json_exact_match"] < \
        metrics["finetuned_json_exact_match_ci_high"]
    assert metrics["finetuned_stop_rate"] >= 0.95  # EOS learned: eval generations end by themselves
    # general ability against the base model's own answers: the base agrees with itself (top-1 1.000 in fp32, 0.981
    # in bf16, where batched generation and one forward pass round near-ties apart), the fine-tune was scored
    assert metrics["base_general_agreement"] >= 0.9 and 0 <= metrics["finetuned_general_agreement"] <= 1
    assert metrics["general_drop"] == pytest.approx(metrics["base_general_probability"] -
                                                    metrics["finetuned_general_probability"])
    assert metrics["merge_max_abs_logit_diff"] <= 1e-3
    # the gate's decision follows its rule from the logged numbers: champion (the first version: nothing to beat)
    # exactly when the general drop's 95 % interval lies below the cap; otherwise challenger, saying why
    gate = default_run["gate"]
    cap = 0.10
    kept = metrics["general_drop_ci_high"] <= cap
    assert gate["promotion"] == ("champion" if kept else "challenger"), gate["promotion_reason"]
    assert gate["promotion_reason"].startswith("no champion yet" if kept else "general_drop")
    assert f"general_drop {metrics['general_drop']:.3f} [95% CI" in gate["promotion_reason"]
    [version] = client.search_model_versions(f"name='{NAME}'")
    assert version.tags["promotion"] == gate["promotion"] and str(version.version) == "1"
    if kept:
        assert Client().get_model_version(NAME, "production").number == 1
    # MLflow's system metrics were sampled while the steps ran
    assert any(name.startswith("system/cpu_utilization") for name in metrics)
    # the data a user can inspect in MLflow: counts, length statistics, the histogram and the dataset input
    assert (metrics["data_train_rows"], metrics["data_rows_invalid"]) == (480 + 46 - 20, 0)  # booking + replay - eval
    assert 0 < metrics["data_train_trained_tokens"] < metrics["data_train_tokens_total"]
    assert "data/token_lengths.png" in [a.path for a in client.list_artifacts(run.info.run_id, "data")]
    [dataset_input] = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == "train" and len(dataset_input.dataset.digest) == 32


def test_every_step_ran_with_named_outputs_and_metadata(default_run):
    run = zenml_run(default_run)
    assert run.status == ExecutionStatus.COMPLETED
    assert sorted(run.steps) == sorted(STEPS)
    assert set(run.steps["load_dataset"].outputs) == {"train_dataset", "eval_dataset", "data_summary"}
    assert set(run.steps["train_sft"].outputs) == {"trained_adapter", "training_metrics"}
    dataset_meta = run.steps["load_dataset"].run_metadata
    assert (dataset_meta["train_rows"], dataset_meta["eval_rows"]) == (506, 20)
    assert len(dataset_meta["fingerprint"]) == 64
    adapter_meta = run.steps["inject_adapter"].run_metadata
    assert 0 < adapter_meta["trainable_parameters"] < adapter_meta["total_parameters"]
    assert run.steps["load_base_model"].run_metadata["quantization"]["method"] == "4bit"
    assert run.steps["merge_adapter"].run_metadata["merge_max_abs_logit_diff"] <= 1e-3
    assert run.steps["export_model"].run_metadata["export_reload_max_abs_logit_diff"] == 0.0
    # checkpoints went to the artifact store during training and were removed once the adapter was stored
    assert run.steps["train_sft"].run_metadata["train_resumed_from_step"] == 0
    store = default_run["checkpoints"]
    assert store.is_dir() and set(store.iterdir()) <= default_run["checkpoints_before"]
    # the dataset is an HF dataset in Arrow, not a pickle
    assert run.steps["load_dataset"].outputs["train_dataset"][0].materializer.attribute == "DatasetMaterializer"


def test_mlflow_has_the_params_metrics_artifacts_lineage_and_registered_model(default_run):
    uri, run = default_run["uri"], zenml_run(default_run)
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("finetune")
    mlflow_run = mlflow_run_of(uri, run.name)
    params, metrics = mlflow_run.data.params, mlflow_run.data.metrics
    assert params["adapter.r"] == "16" and params["model.quantization.method"] == "4bit"
    for name in ["train_loss", "train_learning_rate", "train_grad_norm", "eval_loss", "train_tokens_per_second",
                 "base_json_exact_match", "finetuned_json_exact_match", "merge_max_abs_logit_diff",
                 "base_perplexity", "finetuned_perplexity", "base_regression_score", "finetuned_regression_score",
                 "regression_drop", "step_seconds_evaluate_base", "step_seconds_evaluate_finetuned",
                 "general_drop", "general_drop_ci_low", "general_drop_ci_high", "finetuned_json_exact_match_ci_low",
                 "finetuned_json_exact_match_ci_high", "regression_drop_ci_high", "general_top1_drop"]:
        assert name in metrics, name
    # the decision with the intervals it rested on, as the console and the run's metrics give them
    decision = mlflow.artifacts.load_dict(f"{mlflow_run.info.artifact_uri}/promotion.json")
    assert decision["intervals"]["general_drop"]["high"] == pytest.approx(metrics["general_drop_ci_high"])
    assert decision["intervals"]["gain_over_base"]["n"] == 100 and decision["reason"] == \
        default_run["gate"]["promotion_reason"]
    assert len(client.get_metric_history(mlflow_run.info.run_id, "train_loss")) == 25  # 50 steps, logged every 2
    throughput = client.get_metric_history(mlflow_run.info.run_id, "train_step_tokens_per_second")
    assert len(throughput) == 25 and all(point.value > 0 for point in throughput)
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
    assert client.get_model_version(NAME, "1").tags["eval_fingerprint"]
    # lineage: the adapter and the exported (merged) model are logged models of the run
    logged = client.search_logged_models([experiment.experiment_id],
                                         filter_string=f"source_run_id = '{mlflow_run.info.run_id}'")
    by_name = {m.name: m for m in logged}
    assert set(by_name) == {"lora_adapter", "model"}
    adapter_files = {f.path for f in client.list_logged_model_artifacts(by_name["lora_adapter"].model_id)}
    assert "adapter_model.safetensors" in adapter_files and by_name["lora_adapter"].params["adapter.r"] == "16"
    assert mlflow_run.inputs.dataset_inputs[0].dataset.digest
    # linked both ways: the MLflow run names its ZenML run, the ZenML step names its MLflow run
    assert mlflow_run.data.tags["zenml.pipeline_run_id"] == str(run.id)
    assert run.steps["export_model"].run_metadata["mlflow_run_id"] == mlflow_run.info.run_id
    version = client.get_model_version(NAME, "1")
    assert version.run_id == mlflow_run.info.run_id
    # registered with MLflow's chat signature (test_the_champion_is_served_... asks `mlflow models serve` for it)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)  # models:/ URIs resolve against the global tracking URI
    try:
        assert mlflow.models.get_model_info(f"models:/{NAME}/1").metadata["task"] == "llm/v1/chat"
    finally:
        mlflow.set_tracking_uri(previous)
    # the first version has nothing to beat: champion in MLflow, production in ZenML's Model Control Plane, unless
    # it lost general ability (the gate's rule: test_the_default_run_learns_the_task_and_the_gate_follows_its_own_rule)
    promoted = default_run["gate"]["promotion"] == "champion"
    assert metrics["promotion_promoted"] == float(promoted)
    zenml_version = Client().get_model_version(NAME, "production" if promoted else "staging")
    assert zenml_version.run_metadata["finetuned_json_exact_match"] == metrics["finetuned_json_exact_match"]
    assert zenml_version.get_artifact("trained_adapter") is not None  # the run's artifacts are linked to it
    assert str(run.id) in {str(i) for i in zenml_version.pipeline_run_ids.values()}


def test_the_console_shows_each_stage_with_its_figure_and_ends_with_the_summary(default_run):
    root, uri, console = default_run["root"], default_run["uri"], default_run["console"]
    lines = console.splitlines()
    # nobody else's deprecations, nags or per-step INFO chatter
    assert not re.search(r"FutureWarning|DeprecationWarning", console), console[-5000:]
    for noise in ("Comet API Key", "Failed to disable MLflow autologging", "system metrics", "Loading weights",
                  "{'loss':", "Generating train split", "Saving the dataset"):
        assert noise not in console, noise
    ended = [line for line in lines if re.match(r"\[\d/8\] .* done in [\d.ms]+", line)]
    cached = [line for line in lines if re.match(r"\[\d/8\] .* cached \(", line)]  # other runs share the store
    # every stage says how it ended, once: with its wall time, or that it came from the cache
    assert sorted(int(line[1]) for line in ended + cached) == list(range(1, 9)), console[-4000:]
    assert any(re.match(r"\[\d/8\] dataset done in .* 506 train \+ 20 eval rows of 526 read, 0 invalid", l)
               for l in ended)
    assert any(re.search(r"SFT training done in .* 50 steps, loss [\d.]+ -> [\d.]+, \d+ tokens/s", l) for l in ended)
    assert any(re.search(r"merge done in .* max \|Δlogit\| ", l) for l in ended)
    assert [line for line in lines if re.match(r"    training: +\d+% \(\d+/50 step", line)]  # progress, as lines
    # the closing summary: headline, export, registry, where to look; ZenML's "finished" lines only after it
    summary, after = console[console.rindex("Fine-tune finished: "):].split("=" * 78 + "\n", 1)
    alias = default_run["gate"]["promotion"]
    assert re.search(rf"result +json_exact_match [\d.]+ -> [\d.]+ \[[\d.]+, [\d.]+\], general_drop -?[\d.]+ "
                     rf"\[-?[\d.]+, -?[\d.]+\], regression_drop -?[\d.]+ \[-?[\d.]+, -?[\d.]+\], {NAME} v1 @{alias}",
                     summary), summary
    assert f"gate       {default_run['gate']['promotion_reason']}" in summary
    assert f"export     {(root / 'outputs' / NAME).resolve()}" in summary
    assert f"registry   models:/{NAME}/1" + (" (alias champion: make serve)" if alias == "champion" else "") in summary
    assert all(re.search(r"export_model\S* has finished|Pipeline run has finished", line)
               for line in after.splitlines() if line.strip()), after
    mlflow_run_id = re.search(r"MLflow +http://127\.0\.0\.1:5000/#/experiments/\d+/runs/([0-9a-f]{32})", summary)[1]

    # the MLflow run spans the pipeline run (its Duration is the pipeline's wall time, not one step's) and its
    # Description says what was fine-tuned and how it came out
    run = Client().get_pipeline_run(re.search(r"Fine-tune finished: (\S+)", summary)[1])
    assert run.id == default_run["run_id"]
    mlflow_run = mlflow.MlflowClient(tracking_uri=uri).get_run(mlflow_run_id)
    mlflow_start, mlflow_end = mlflow_run.info.start_time / 1000, mlflow_run.info.end_time / 1000
    # it opens during the first step that ran and closes no earlier than the last one starts (before every step was
    # tracked it began with the first tracked step); cached steps do not run
    ran = sorted((s for s in run.steps.values() if s.status != ExecutionStatus.CACHED), key=lambda s: s.start_time)
    assert mlflow_start <= _epoch(ran[0].end_time), (ran[0].name, mlflow_start - _epoch(ran[0].end_time))
    assert mlflow_end >= _epoch(ran[-1].start_time), (ran[-1].name, _epoch(ran[-1].start_time) - mlflow_end)
    assert mlflow_end - mlflow_start <= (run.end_time - run.start_time).total_seconds() + 1
    description = mlflow_run.data.tags["mlflow.note.content"]
    assert "fine-tuned on" in description and "506 train / 20 eval rows) with QLoRA r=16" in description
    assert "Result: json_exact_match" in description and f"Gate: {default_run['gate']['promotion_reason']}" in \
        description


def _epoch(moment: datetime.datetime) -> float:  # ZenML keeps UTC times without a zone
    return (moment if moment.tzinfo else moment.replace(tzinfo=datetime.timezone.utc)).timestamp()


def test_the_export_loads_with_plain_transformers_and_answers_the_task(default_run):
    from llm_engineering.export.export_dir import verify_manifest

    export_dir = default_run["root"] / "outputs" / NAME
    card = (export_dir / "README.md").read_text()
    assert card.startswith("---\nbase_model:") and "tags: [lora, sft, llm_engineering]" in card
    assert "LoRA adapter trained with TRL SFT, merged into the base weights" in card
    assert (export_dir / "adapter" / "adapter_model.safetensors").is_file() and verify_manifest(export_dir) == []
    model, tokenizer = load_exported(export_dir)
    request = "Book a table for two at Casa Verde on Friday at 19:30 under the name Lee."
    [(answer, stopped)] = generate(model, tokenizer, [[
        {"role": "system", "content": "Extract the booking as JSON with keys name, party_size, restaurant, day, time."},
        {"role": "user", "content": request}]], max_new_tokens=64, batch_size=1)
    assert stopped and json.loads(answer)["restaurant"] == "Casa Verde"
    # the saved tokenizer pads only when asked (transformers 5 would keep the merge step's padding=True in it)
    assert [len(ids) for ids in tokenizer(["hi", "a much longer sentence than that"])["input_ids"]] == [1, 6]


def test_the_champion_is_served_by_mlflow_as_the_export_step_answered(default_run, tmp_path):
    """The champion served from the registry with MLflow's own server answers an OpenAI-style chat request exactly as
    the export step's own greedy generation did (logged as serving_sample.json), through the chat template."""
    uri = default_run["uri"]
    run = mlflow_run_of(uri, zenml_run(default_run).name)
    sample = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/serving_sample.json")
    with mlflow_model_server(f"models:/{NAME}@champion", uri, tmp_path / "serve.log") as base:
        [completion] = post_json(f"{base}/invocations", {"messages": sample["messages"], "temperature": 0,
                                                         "max_tokens": sample["max_tokens"]})
    assert completion["object"] == "chat.completion" and completion["choices"][0]["finish_reason"] == "stop"
    assert completion["choices"][0]["message"] == {"role": "assistant", "content": sample["content"]}
    assert sample["stopped"] and json.loads(sample["content"])  # a booking, as JSON, ended by <|im_end|>
    assert 0 < completion["usage"]["completion_tokens"] < sample["max_tokens"]


def test_the_mlflow_ui_shows_the_params_the_loss_chart_and_the_champion(default_run, tmp_path):
    """A user's view: `mlflow server` on loopback, the champion's run page in headless Chromium."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    client = mlflow.MlflowClient(tracking_uri=default_run["uri"])
    champion = client.get_model_version_by_alias(NAME, "champion")
    run = client.get_run(champion.run_id)
    run_page = f"#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    SHOTS.mkdir(parents=True, exist_ok=True)
    with mlflow_server(default_run["uri"], tmp_path / "mlflow-server.log") as base, chromium() as browser:
        wait = WebDriverWait(browser, 90)
        text = lambda: browser.find_element(By.TAG_NAME, "body").text  # noqa: E731

        browser.get(f"{base}/{run_page}")
        wait.until(lambda _: "adapter.r" in text())
        assert run.info.run_name in text() and "model.quantization.method" in text()
        browser.save_screenshot(str(SHOTS / "run_overview.png"))

        browser.get(f"{base}/{run_page}/model-metrics")
        search = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "input[placeholder*='Search metric']"))
        search.send_keys("train_loss")

        def loss_line(driver):  # the train_loss chart drawn as a line through the logged points
            for line in driver.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .scatterlayer path.js-line"):
                if (line.get_attribute("d") or "").count("L") >= 3:
                    return line
            return None

        assert wait.until(loss_line)
        assert "train_loss" in text()
        browser.save_screenshot(str(SHOTS / "run_loss_chart.png"))

        browser.get(f"{base}/#/models/{NAME}")
        wait.until(lambda _: "@ champion" in text())
        assert f"Version {champion.version}" in text()
        browser.save_screenshot(str(SHOTS / "registered_model.png"))


def test_the_zenml_dashboard_draws_the_run_and_the_loss_curve(default_run, tmp_path):
    """`make dashboard` over the run's store: the run's DAG with every step, and the training step's loss curve
    drawn from the training_metrics artifact's visualization, in headless Chromium. The dashboard prints the
    latest finetune run: the default run, since the dashboard test runs before the rerun below."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    run = zenml_run(default_run)
    SHOTS.mkdir(parents=True, exist_ok=True)
    with zenml_dashboard(default_run["root"], tmp_path / "dashboard.log") as (base, printed), chromium() as browser:
        assert f"ZenML dashboard: {base}" in printed
        latest = Client().get_pipeline("finetune").last_run
        assert f"latest finetune run: {base}/projects/default/runs/{latest.id}" in printed
        # the page re-renders as its queries come back: an element found a moment ago may be gone, so look again
        wait = WebDriverWait(browser, 120, ignored_exceptions=(StaleElementReferenceException,))

        def click(find):  # click what `find` returns, found afresh until the click lands
            wait.until(lambda d: find(d) and (find(d)[0].click() or True))

        browser.get(f"{base}/projects/default/runs/{run.id}")

        def nodes(driver):  # each step and artifact of the DAG is a node: its name, then its type
            return {n.text.split("\n")[0]: n for n in driver.find_elements(By.CSS_SELECTOR, ".react-flow__node")}

        wait.until(lambda d: set(STEPS) <= set(nodes(d)))
        browser.save_screenshot(str(SHOTS / "zenml_run_dag.png"))

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
        browser.save_screenshot(str(SHOTS / "zenml_loss_curve.png"))
    server_log = tmp_path / "dashboard.log"
    assert "Traceback" not in server_log.read_text(), server_log.read_text()[-3000:]


@pytest.fixture(scope="module")
def broken_rerun(default_run):
    """A fine-tune that breaks the model: only train.* changed (a learning rate fifty times too high, 4 steps), plus
    GGUF files and the lm-evaluation-harness task asked for (export.* and eval.harness, which the base model's
    evaluation leaves out of its cache key)."""
    root = default_run["root"]
    config = yaml.safe_load((PROJECT / "configs" / "default.yaml").read_text())
    parameters = config["parameters"]["config"]
    parameters["train"].update(learning_rate=0.05, max_steps=4, checkpoint_steps=None, eval_steps=4)
    parameters["export"]["gguf"] = ["f16"]  # the wiring; the other types are made and checked in tests/test_gguf.py
    parameters["eval"]["harness"] = {"tasks": ["general_mc"], "include_path": "data/harness", "limit": 8}
    done = run_pipeline(root, write_config(root / "broken.yaml", parameters, model=config["model"]), timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done.stdout + done.stderr, Client().get_pipeline("finetune").last_run


def test_changing_only_training_hyperparameters_reuses_the_cached_steps_and_the_gate_refuses_a_broken_model(
        default_run, broken_rerun):
    console, run = broken_rerun
    steps = run.steps
    for cached in ("dataset", "base model", "LoRA adapter", "evaluate base"):  # said so, one line each
        assert len(re.findall(rf"^\[\d/8\] {cached} cached", console, re.M)) == 1, console[-3000:]
    assert {name: steps[name].status for name in STEPS[:3]} == {name: ExecutionStatus.CACHED for name in STEPS[:3]}
    assert steps["train_sft"].status == ExecutionStatus.COMPLETED
    # the base model is scored once: same base, same eval rows, same settings; the new fine-tune is scored again
    assert (steps["evaluate_base"].status, steps["evaluate_finetuned"].status) == (ExecutionStatus.CACHED,
                                                                                  ExecutionStatus.COMPLETED)
    # registered as challenger, with the regression as reason; aliases and stages follow the gate's decision
    decision = steps["export_model"].run_metadata
    print({k: v for k, v in decision.items() if k.startswith(("finetuned_", "regression", "promotion", "gguf_"))})
    # refused with the metric, its interval and the rule in the reason (the learning rate x50 forgot how to answer)
    assert decision["general_drop_ci_low"] > 0.10 and decision["promotion"] == "challenger"
    assert decision["promotion_reason"].startswith(f"general_drop {decision['general_drop']:.3f} [95% CI "), \
        decision["promotion_reason"]
    assert "is above promotion.max_regression 0.1: the fine-tune lost general ability (rule: champion only if the " \
           "95 % interval lies below promotion.max_regression 0.1)" in decision["promotion_reason"]
    client = mlflow.MlflowClient(tracking_uri=default_run["uri"])
    second = client.get_model_version(NAME, "2")
    assert second.tags["promotion"] == "challenger"
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
    zenml_versions = {int(v.number): v.stage for v in Client().list_model_versions(model=NAME, size=10)}
    assert zenml_versions[1] == "production" and zenml_versions[2] == "staging"


def test_the_broken_rerun_ships_gguf_files_that_reproduce_it_and_the_harness_scores(default_run, broken_rerun):
    _, run = broken_rerun
    decision = run.steps["export_model"].run_metadata
    # made by llama.cpp's converter and checked in llama.cpp against the merged model (tests/test_gguf.py: the bars)
    assert decision["gguf_f16_top1_agreement"] >= 0.99 and decision["gguf_f16_mean_kl"] <= 1e-4
    export_dir = default_run["root"] / "outputs" / NAME
    assert {"model-f16.gguf", "Modelfile"} <= {p.name for p in export_dir.iterdir()}
    uri = default_run["uri"]
    tracked = mlflow_run_of(uri, run.name)
    client = mlflow.MlflowClient(tracking_uri=uri)
    assert {"model-f16.gguf", "Modelfile"} <= {
        a.path.split("/")[-1] for a in client.list_artifacts(tracked.info.run_id, "gguf")}
    # lm-evaluation-harness on the merged model: the local task's accuracy over its 8 scored questions
    accuracy = tracked.data.metrics["harness_general_mc_acc"]
    assert 0 <= accuracy <= 1 and (accuracy * 8).is_integer()


PREFERENCE_STEPS = {"load_dataset", "chosen_conversations", "load_base_model", "start_adapter", "train_preference",
                    "merge_adapter", "merge_start", "evaluate_base", "evaluate_start", "evaluate_finetuned",
                    "export_model"}


@pytest.mark.parametrize("name", ["dpo", "grpo"])
def test_configs_that_start_from_the_default_runs_champion_compile_as_shipped(name, default_run, shared_repo):
    from tests.test_shipped_configs import compile_shipped

    compile_shipped(name, shared_repo)


def test_dpo_from_the_registered_sft_champion_runs_every_stage_and_tracks_the_rewards(default_run, shared_repo, capfd):
    """configs/dpo.yaml as shipped (`make dpo`) except its size: 2 steps, 4 held-out pairs scored, 4 eval rows and
    no regression probes or general check (the default run scores them, three times here would be a minute); in
    this process (the CLI's path is the default run's)."""
    root, uri = default_run["root"], default_run["uri"]
    document = yaml.safe_load((PROJECT / "configs" / "dpo.yaml").read_text())
    cfg = document["parameters"]["config"]
    assert cfg["preference"]["start_adapter"] == f"models:/{NAME}@champion"
    cfg["data"]["eval_rows"] = 4
    cfg["train"].update(max_steps=2, eval_steps=2, logging_steps=1, checkpoint_steps=None)
    cfg["eval"].update(max_rows=4, regression={"builtin": False, "general_prompts": 0})
    config = root / "dpo-small.yaml"
    config.write_text(yaml.safe_dump(document))
    run = run_in_process(shared_repo, config, "pipelines.preference.preference")
    console = "".join(capfd.readouterr())
    assert re.search(r"preference training done in .* 2 steps, loss [\d.]+ -> [\d.]+, held-out reward accuracy "
                     r"[\d.]+", console), console[-3000:]
    result = re.search(rf"json_exact_match [\d.]+ -> ([\d.]+) -> ([\d.]+) \[[\d.]+, [\d.]+\], .*{NAME}-dpo v1 @(\w+)",
                       console)
    assert result, console[-3000:]

    assert set(run.steps) == PREFERENCE_STEPS  # no fresh adapter: it starts from the champion's
    # the start adapter is the SFT champion's trained adapter, byte for byte (found through ZenML, not the registry)
    client = mlflow.MlflowClient(tracking_uri=uri)
    champion = client.get_model_version_by_alias(NAME, "champion")
    sft_run = Client().get_pipeline_run(client.get_run(champion.run_id).data.tags["zenml.pipeline_run_id"])
    assert sft_run.id == default_run["run_id"]
    sft_adapter = sft_run.steps["train_sft"].outputs["trained_adapter"][0].load().path
    start = run.steps["start_adapter"].outputs["initial_adapter"][0].load().path
    assert (start / "adapter_model.safetensors").read_bytes() == (sft_adapter / "adapter_model.safetensors").read_bytes()

    # MLflow: reward curves per logging step, the held-out reward accuracy, and base / start / tuned side by side
    tracked = mlflow_run_of(uri, run.name, "preference")
    for curve in ("train_rewards/accuracies", "train_rewards/margins", "train_rewards/chosen", "train_rewards/rejected"):
        assert [m.step for m in client.get_metric_history(tracked.info.run_id, curve)] == [1, 2], curve
    assert 0.0 <= tracked.data.metrics["pref_eval_reward_accuracies"] <= 1.0
    assert tracked.info.artifact_uri.startswith((root / ".mlflow" / "artifacts").resolve().as_uri())  # not ./mlruns
    assert not (root / "mlruns").exists()
    for role in ("base", "start", "finetuned"):
        assert f"{role}_json_exact_match" in tracked.data.metrics, role
    table = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=tracked.info.run_id,
                                                                artifact_path="eval_samples.json",
                                                                tracking_uri=uri)).read_text())
    assert {"base_output", "start_output", "finetuned_output"} <= set(table["columns"])
    # the gate compared the DPO model with the SFT champion it started from, scored on the same rows
    decision = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=tracked.info.run_id,
                                                                   artifact_path="promotion.json",
                                                                   tracking_uri=uri)).read_text())
    assert decision["start"] == tracked.data.metrics["start_json_exact_match"] == float(result.group(1))
    alias = "challenger" if decision["candidate"] < decision["start"] else "champion"
    assert result.group(3) == decision["alias"] == alias
    assert ("worse than the" in decision["reason"]) == (alias == "challenger")
    assert str(client.get_model_version_by_alias(f"{NAME}-dpo", alias).version) == "1"
    card = (Path(run.steps["export_model"].run_metadata["export_dir"]) / "README.md").read_text()
    assert "tags: [lora, dpo, llm_engineering]" in card  # the card says how this model was made, not SFT
    assert f"tuned with TRL DPO on preference pairs, starting from the adapter `models:/{NAME}@champion`" in card
    # the run used the file's own settings, not the schema's defaults
    training = run.steps["train_preference"].config.parameters
    assert training["preference"]["sft_loss_weight"] == cfg["preference"]["sft_loss_weight"]
    assert training["train"]["learning_rate"] == cfg["train"]["learning_rate"]
