"""Every config in configs/ runs end to end through `zenml pipeline run`, as shipped except for its size: the model is
the tiny Llama (same tokenizer), training takes 2 steps, at most 4 rows are held out and the evaluation scores 4
rows. Everything else — data sources and formats, quantization, adapter shape and targets, scheduler,
batch/accumulation, compile, packing, merge settings, gate, ZenML model, step settings — is the file's own, and the
test checks the run used it. A config added to configs/ is picked up here without editing this file.

Not run here, with where they are: the full-size default run (tests/test_default_pipeline.py runs configs/default.yaml
on the real embedded model; here it runs small too, as the start adapter of configs/dpo.yaml), and the GPU step
operator and flex attention of configs/gpu_hub_model.yaml (a CUDA machine; tests/test_step_operator.py checks its
compiled snapshot), so that config's steps run on the orchestrator here, with sdpa. configs/schedule.yaml is not a run config but a schedule of
configs/default.yaml: tests/test_schedules.py creates it through the CLI.
"""

import json
from pathlib import Path

import pytest
import yaml
from zenml.client import Client
from zenml.enums import ExecutionStatus

from tests.pipeline_helpers import PROJECT, run_pipeline, setup_repo

CONFIGS = sorted(p.stem for p in (PROJECT / "configs").glob("*.yaml"))
PIPELINES = {"finetune": "pipelines.finetune.finetune", "preference": "pipelines.preference.preference"}


def shrink(document: dict, tiny_model_dir: Path) -> dict:
    """The shipped config at test size: only the model, step counts, row counts and evaluation size change."""
    cfg = document["parameters"]["config"]
    cfg["model"] = {**cfg.get("model", {}), "source": "local", "name_or_path": str(tiny_model_dir)}
    data = cfg.setdefault("data", {})
    for source in data.get("sources", [data]):
        if source.get("path"):  # the sample files, wherever the test repository is
            source["path"] = str(PROJECT / source["path"])
    data["eval_rows"] = min(data.get("eval_rows", 4), 4)
    train = cfg.setdefault("train", {})
    train.update(max_steps=2, eval_steps=2, logging_steps=1)
    train["checkpoint_steps"] = None
    evaluation = cfg.setdefault("eval", {})
    evaluation.update(max_rows=4, max_new_tokens=8)
    if evaluation.get("eval_file"):
        evaluation["eval_file"] = str(PROJECT / evaluation["eval_file"])
    if cfg["model"].get("attn_implementation") == "flex_attention":  # no CUDA here, and flex attention has no
        cfg["model"]["attn_implementation"] = "sdpa"  # backward on CPU (the load step refuses it, naming sdpa)
    for step in (document.get("steps") or {}).values():  # no CUDA here: the steps run on the orchestrator,
        step.pop("step_operator", None)  # and a failure is not retried after a minute's wait
        step.pop("retry", None)
    return document


def pipeline_of(document: dict) -> str:
    return "preference" if "preference" in document["parameters"]["config"] else "finetune"


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("shipped-configs")
    setup_repo(root)
    return root


def run_shipped(name: str, repo: Path, tiny_model_dir: Path, monkeypatch) -> tuple[dict, dict]:
    """Runs configs/<name>.yaml shrunk; returns the shrunk document and the run's steps by name."""
    document = yaml.safe_load((PROJECT / "configs" / f"{name}.yaml").read_text())
    document = shrink(document, tiny_model_dir)
    config = repo / f"{name}.yaml"
    config.write_text(yaml.safe_dump(document))
    pipeline = pipeline_of(document)
    done = run_pipeline(repo, config, pipeline=PIPELINES[pipeline])
    assert done.returncode == 0, f"configs/{name}.yaml:\n" + done.stdout[-3000:] + done.stderr[-5000:]
    monkeypatch.chdir(repo)
    return document, Client().get_pipeline(pipeline).last_run.steps


@pytest.fixture(scope="module")
def sft_champion(repo, tiny_model_dir):
    """configs/default.yaml at test size: registers smollm2-booking@champion, configs/dpo.yaml's start adapter."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        return run_shipped("default", repo, tiny_model_dir, monkeypatch)


def test_the_shipped_config_list_is_what_this_test_expects():
    # A new config needs no edit here; this only guards against the glob finding nothing (a moved folder).
    assert {"default", "dpo", "orpo", "data_text", "gpu_hub_model"} <= set(CONFIGS)


@pytest.mark.parametrize("name", [c for c in CONFIGS if c != "schedule"])
def test_every_shipped_config_runs_end_to_end(name, repo, tiny_model_dir, monkeypatch, request):
    adapter = None
    if name in ("default", "dpo"):
        document, steps = request.getfixturevalue("sft_champion")
        adapter = document["parameters"]["config"]["adapter"]
        if name == "dpo":
            document, steps = run_shipped(name, repo, tiny_model_dir, monkeypatch)
    else:
        document, steps = run_shipped(name, repo, tiny_model_dir, monkeypatch)
    cfg = document["parameters"]["config"]
    adapter = cfg.get("adapter") or adapter  # dpo.yaml's adapter is default.yaml's, taken from its champion

    assert all(s.status in (ExecutionStatus.COMPLETED, ExecutionStatus.CACHED) for s in steps.values()), \
        {n: s.status for n, s in steps.items()}
    data = steps["load_dataset"].run_metadata
    assert data["rows_invalid"] == 0 and data["train_rows"] > 0
    if cfg["data"].get("format"):
        assert data["format"] == cfg["data"]["format"]
    if cfg["data"].get("sources"):
        assert len(data["sources"]) == len(cfg["data"]["sources"])

    # The run used the file's model, adapter and training settings, not the schema's defaults.
    base = steps["load_base_model"].run_metadata
    assert base["quantization"]["method"] == cfg["model"].get("quantization", {}).get("method", "none")
    adapter_step = "inject_adapter" if "inject_adapter" in steps else "start_adapter"
    adapter_cfg = json.loads(next(Path(steps[adapter_step].outputs[
        next(iter(steps[adapter_step].outputs))][0].uri).rglob("adapter_config.json")).read_text())
    assert adapter_cfg["r"] == adapter["r"] and adapter_cfg["lora_alpha"] == adapter["alpha"]
    targets = adapter["target_modules"]
    if isinstance(targets, list):
        assert sorted(adapter_cfg["target_modules"]) == sorted(targets)
    training = steps["train_sft" if "train_sft" in steps else "train_preference"].run_metadata
    assert training.get("train_steps", training.get("pref_steps")) == 2

    # Evaluated, exported, registered and gated on the config's own metric.
    export = steps["export_model"].run_metadata
    registered = cfg["export"].get("registered_model_name") or document["model"]["name"]
    assert export["registered_model_name"] == registered and int(export["version"]) >= 1
    assert export["promotion"] in ("champion", "challenger") and export["promotion_reason"]
    metric = cfg.get("eval", {}).get("metric", "auto")
    if metric != "auto":
        assert "finetuned_" + metric in export
    output_dir = Path(export["export_dir"])
    assert (output_dir / "model.safetensors").exists() or list(output_dir.glob("model-*.safetensors"))
    if name == "dpo":  # it started from the SFT champion that configs/default.yaml registered
        assert cfg["preference"]["start_adapter"] == "models:/smollm2-booking@champion"
    elif name == "data_mixture":
        assert [s["rows_read"] for s in data["sources"]] == [240, 60, 60]
        assert data["duplicate_rows"] == data["rows_deduped"] == 30
    elif name == "data_tools":
        rows = steps["load_dataset"].outputs["train_dataset"][0].load()
        assert json.loads(rows[0]["tools"])[0]["function"]["name"] == "book_table"
    elif name == "data_text":  # plain text is scored by perplexity, lower is better, and that is what was gated
        assert data["format"] == "text" and export["finetuned_perplexity"] > 1
        assert export["promotion_reason"] == "no champion yet"
