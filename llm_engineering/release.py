"""The export stage's one entry point: gate, write, verify, track, register and promote a fine-tuned model.

`release` reads everything the gate needs before anything is written or registered, writes the servable directory
atomically and checks it reloads to the merged model, logs what a user inspects in MLflow (params, metrics, model card,
eval table, GGUF files, the serving sample), registers the model and applies the gate's decision (champion only if it
beats the current champion on the same eval data without regressing), and pushes it to the Hub if asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from llm_engineering import tracking
from llm_engineering.artifacts import first_rows
from llm_engineering.config import GENERATION_METRICS, ExportConfig, RunConfig, adapter_model_params, flatten
from llm_engineering.console import run_description
from llm_engineering.evaluation import ModelEvaluation, compare, item_drops, item_scores
from llm_engineering.export.export_dir import (
    gguf_metrics, load_exported, push_to_hub, serving_sample, verify_export, write_export,
)
from llm_engineering.export.model_card import check_vllm_rank, model_card
from llm_engineering.promotion import Decision, Evidence, apply_decision, current_champion, decide, start_metric


@dataclass
class Release:
    out: Path
    summary: dict[str, Any]  # metrics, registry version, the gate's decision: the step's metadata
    card: str
    samples: list[dict]  # the base / (start /) fine-tuned eval table
    decision: Optional[Decision]


def release(merged_model: Path, trained_adapter: Path, base_model_name: str, eval_dataset, data_summary: dict,
            training_metrics: dict, merge_report: dict, base_evaluation: dict, finetuned_evaluation: dict,
            export: ExportConfig, run_config: dict, start_evaluation: Optional[dict] = None, method: str = "sft",
            registry_default: Optional[str] = None, step_seconds: Optional[dict] = None) -> Release:
    """`registry_default`: the name to register under when `export.registered_model_name` is unset (the pipeline's
    model); `step_seconds`: each step's wall time, logged with the metrics so a run with cached steps is complete."""
    config = RunConfig.model_validate(run_config)
    base, tuned = ModelEvaluation(**base_evaluation), ModelEvaluation(**finetuned_evaluation)
    start = ModelEvaluation(**start_evaluation) if start_evaluation else None
    evaluated, samples = compare(base, tuned, start)
    metrics = {**training_metrics, **{f"merge_{k}": v for k, v in merge_report.items() if isinstance(v, (int, float))},
               **evaluated}

    # Everything the gate needs is read before anything is written or registered.
    gate_metric = config.promotion_metric(data_summary["format"])
    registry_name = export.registry_name(registry_default)
    champion = None
    if registry_name:
        if gate_metric not in metrics:
            raise ValueError(f"promotion.metric {gate_metric!r} was not computed in this run, so the new version "
                             f"cannot be gated; computed: {', '.join(sorted(metrics))}")
        champion = current_champion(registry_name, gate_metric)

    vllm_warning = check_vllm_rank(config.adapter.r) if export.include_adapter else None
    model, tokenizer = load_exported(merged_model)
    rows = first_rows(eval_dataset, export.verify_prompts)
    lineage = base_lineage(config.model)
    card = model_card(base_model_name, data_summary, config.model_dump(mode="json"), metrics, method, lineage)
    out = write_export(model, tokenizer, Path(export.output_dir), card, overwrite=export.overwrite,
                       max_shard_size=export.max_shard_size,
                       adapter_dir=trained_adapter if export.include_adapter else None,
                       gguf_types=export.gguf, check_rows=rows)
    exported, exported_tokenizer, reload_diff = verify_export(out, model, rows)
    metrics["export_reload_max_abs_logit_diff"] = reload_diff
    metrics.update(gguf_metrics(out))

    _track(out, config, run_config, metrics, step_seconds or {}, card, samples)
    if lineage:  # the GGUF file the base weights were read from, beside the run's config
        tracking.log_dict(lineage, "base_gguf_source.json")
    adapter_params = adapter_model_params(config.adapter, config.preference if method != "sft" else None)
    tracking.log_adapter_model_unless_logged(trained_adapter, adapter_params)  # training may have come from cache
    sample = serving_sample(exported, exported_tokenizer, rows, export.chat_max_tokens)
    if sample:
        tracking.log_dict(sample, "serving_sample.json")  # the chat request and the answer serving must give
    registered = tracking.log_and_register_model(exported, exported_tokenizer, registry_name,
                                                 export.chat_max_tokens) or {}
    decision = None
    if registered.get("version"):
        gate = config.promotion
        decision = decide(gate_metric, metrics[gate_metric], champion, gate.margin,
                          config.higher_is_better(gate_metric), regression_drop=metrics.get("regression_drop"),
                          max_regression=gate.max_regression, eval_fingerprint=tuned.eval_fingerprint,
                          start=metrics.get(start_metric(gate_metric)) if start_evaluation else None,
                          evidence=gate_evidence(base, tuned, start, gate_metric))
        apply_decision(registry_name, registered["version"], decision, tuned.eval_fingerprint)
        tracking.log_dict(decision.as_dict(), "promotion.json")
        tracking.log_metrics({"promotion_promoted": float(decision.promoted)})
        registered.update(promotion=decision.alias, promotion_reason=decision.reason)
    if export.push_to_hub:
        registered["hub_commit_url"] = push_to_hub(out, export.push_to_hub, export.hub_private)
    summary = {"export_dir": str(out.resolve()), **metrics, **registered}
    if vllm_warning:
        summary["vllm_warning"] = vllm_warning
    tracking.set_description(run_description(base_model_name, data_summary, run_config, summary))
    return Release(out.resolve(), summary, card, samples, decision)


def gate_evidence(base: ModelEvaluation, tuned: ModelEvaluation, start: Optional[ModelEvaluation],
                  gate_metric: str) -> Evidence:
    """The per-item scores the gate decides on: the task's (when the gate metric is the task metric, which is scored
    per item) and general ability's (the base's own answers when scored, else the probes)."""
    per_item = gate_metric.removeprefix("finetuned_") in GENERATION_METRICS  # the task samples' own metric
    task = item_scores(tuned, "task") if per_item else []
    general = "general" if base.general and tuned.general else "regression"
    return Evidence(candidate=task, base=item_scores(base, "task") if task else [],
                    start=item_scores(start, "task") if task and start else [],
                    regression=item_drops(base, tuned, general),
                    regression_metric="general_drop" if general == "general" else "regression_drop")


def base_lineage(model_cfg) -> Optional[dict]:
    """The GGUF file a base model was read from (embedded or `model.source: gguf`), for the card and MLflow."""
    if model_cfg.source not in ("embedded", "gguf"):
        return None
    from llm_engineering.model.gguf_source import gguf_lineage
    from llm_engineering.model.loading import checkpoint_location

    return gguf_lineage(Path(checkpoint_location(model_cfg)))


def _track(out: Path, config: RunConfig, run_config: dict, metrics: dict, step_seconds: dict, card: str,
           samples) -> None:
    tracking.log_params(flatten(config))
    tracking.log_metrics({**metrics, **step_seconds})  # all, so a run with cached steps is complete too
    tracking.log_text(card, "model_card.md")
    tracking.log_dict(run_config, "run_config.yaml")
    tracking.log_table(samples, "eval_samples.json")
    for file in sorted(out.glob("*.gguf")) + sorted(out.glob("Modelfile")) + sorted(out.glob("gguf_check.json")):
        tracking.log_artifact(file, "gguf")
