from pathlib import Path
from typing import Annotated, Any, Tuple

from datasets import Dataset
from zenml import log_metadata, step

import llm_engineering.orchestration  # noqa: F401  (registers materializers)
from llm_engineering import tracking
from llm_engineering.artifacts import first_rows, CheckpointDir
from llm_engineering.config import EvalConfig, ExportConfig, RunConfig, flatten
from llm_engineering.evaluation import evaluate_generation
from llm_engineering.model.export import load_exported, model_card, push_to_hub, verify_export, write_export
from llm_engineering.model.loading import BaseModelRef, load_model, load_tokenizer
from llm_engineering.orchestration.model_control_plane import (
    pipeline_run_tags,
    record_on_model_version,
    step_wall_seconds,
)
from llm_engineering.promotion import gate_registered_version


@step(experiment_tracker=True, enable_cache=False)
def export_model(
    merged_model: CheckpointDir,
    trained_adapter: CheckpointDir,
    base_model: BaseModelRef,
    eval_dataset: Dataset,
    data_summary: dict[str, Any],
    training_metrics: dict[str, float],
    merge_report: dict[str, Any],
    export: ExportConfig,
    evaluation: EvalConfig,
    run_config: dict[str, Any],
) -> Tuple[Annotated[str, "export_dir"], Annotated[dict[str, Any], "evaluation_metrics"]]:
    """Score base vs fine-tuned, write the servable directory atomically, verify it reloads, register it in MLflow,
    and gate it: champion (ZenML stage production) only if it beats the current champion."""
    config = RunConfig.model_validate(run_config)
    tracking.set_tags(pipeline_run_tags())
    rows = first_rows(eval_dataset, evaluation.max_rows)
    model, tokenizer = load_exported(merged_model.path)
    metrics = {**training_metrics, **{f"merge_{k}": v for k, v in merge_report.items() if isinstance(v, (int, float))}}
    samples = []
    if "messages" in eval_dataset.column_names:  # plain-text (continued pre-training) rows have no answer to score
        settings = (evaluation.metric, evaluation.max_new_tokens, evaluation.batch_size)
        base_weights = load_model(base_model.config, quantize=False, dtype=config.merge.dtype)
        base = evaluate_generation(base_weights, load_tokenizer(base_model.config), rows, *settings)
        del base_weights
        tuned = evaluate_generation(model, tokenizer, rows, *settings)
        metrics.update({**base.metrics("base"), **tuned.metrics("finetuned")})
        samples = [{"prompt": b.prompt, "reference": b.reference, "base_output": b.output,
                    "finetuned_output": t.output} for b, t in zip(base.samples, tuned.samples)]

    gate_metric = config.promotion_metric
    if export.registered_model_name and gate_metric not in metrics:  # before anything is written or registered
        raise ValueError(f"promotion.metric {gate_metric!r} was not computed in this run, so the new version cannot be "
                         f"gated; computed: {', '.join(sorted(metrics))}")

    card = model_card(base_model.display_name, data_summary, config.model_dump(mode="json"), metrics)
    out = write_export(model, tokenizer, Path(export.output_dir), card, overwrite=export.overwrite,
                       max_shard_size=export.max_shard_size,
                       adapter_dir=trained_adapter.path if export.include_adapter else None)
    exported, exported_tokenizer, reload_diff = verify_export(out, model, rows[: export.verify_prompts])
    metrics["export_reload_max_abs_logit_diff"] = reload_diff

    tracking.log_params(flatten(config))
    tracking.log_metrics({**metrics, **step_wall_seconds()})  # all, so a run with cached steps is complete too
    tracking.log_text(card, "model_card.md")
    tracking.log_dict(run_config, "run_config.yaml")
    tracking.log_table(samples, "eval_samples.json")
    registered = tracking.log_and_register_model(exported, exported_tokenizer, export.registered_model_name) or {}
    decision = None
    if registered.get("version"):
        gate = config.promotion
        decision = gate_registered_version(export.registered_model_name, registered["version"], gate_metric,
                                           metrics[gate_metric], gate.margin, gate.higher_is_better)
        tracking.log_dict(decision.as_dict(), "promotion.json")
        tracking.log_metrics({"promotion_promoted": float(decision.promoted)})
        registered.update(promotion=decision.alias, promotion_reason=decision.reason)
    if export.push_to_hub:
        registered["hub_commit_url"] = push_to_hub(out, export.push_to_hub, export.hub_private)
    summary = {"export_dir": str(out.resolve()), **metrics, **registered}
    log_metadata(metadata=summary)
    stage = record_on_model_version(summary, decision.promoted if decision else None)
    if stage:
        summary["zenml_model_stage"] = stage
    return str(out.resolve()), summary
