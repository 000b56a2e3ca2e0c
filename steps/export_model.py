from pathlib import Path
from typing import Annotated, Any, Optional, Tuple

from datasets import Dataset
from zenml import log_metadata, step

import llm_engineering.orchestration  # noqa: F401  (registers materializers)
from llm_engineering import tracking
from llm_engineering.artifacts import first_rows, CheckpointDir, Report
from llm_engineering.config import ExportConfig, RunConfig, flatten
from llm_engineering.console import run_description
from llm_engineering.evaluation import ModelEvaluation, compare
from llm_engineering.model.export import (
    check_vllm_rank, gguf_metrics, load_exported, model_card, push_to_hub, serving_sample, verify_export, write_export,
)
from llm_engineering.model.loading import BaseModelRef
from llm_engineering.orchestration.model_control_plane import (
    pipeline_run_tags,
    record_on_model_version,
    step_wall_seconds,
    zenml_model_name,
)
from llm_engineering.views import export_views
from llm_engineering.promotion import apply_decision, current_champion, decide


@step(experiment_tracker=True, enable_cache=False)
def export_model(
    merged_model: CheckpointDir,
    trained_adapter: CheckpointDir,
    base_model: BaseModelRef,
    eval_dataset: Dataset,
    data_summary: dict[str, Any],
    training_metrics: dict[str, float],
    merge_report: dict[str, Any],
    base_evaluation: dict[str, Any],
    finetuned_evaluation: dict[str, Any],
    export: ExportConfig,
    run_config: dict[str, Any],
    start_evaluation: Optional[dict[str, Any]] = None,
    method: str = "sft",
) -> Tuple[Annotated[str, "export_dir"], Annotated[Report, "evaluation_metrics"]]:
    """Write the servable directory atomically, verify it reloads, register it in MLflow, and gate it: champion
    (ZenML stage production) only if it beats the current champion on the same eval data without regressing.
    `start_evaluation`: a preference run's starting model, shown beside the base and the tuned one; `method`: how
    the adapter was trained (sft, dpo, orpo), for the model card."""
    config = RunConfig.model_validate(run_config)
    tracking.set_tags(pipeline_run_tags())
    base, tuned = ModelEvaluation(**base_evaluation), ModelEvaluation(**finetuned_evaluation)
    evaluated, samples = compare(base, tuned, ModelEvaluation(**start_evaluation) if start_evaluation else None)
    metrics = {**training_metrics, **{f"merge_{k}": v for k, v in merge_report.items() if isinstance(v, (int, float))},
               **evaluated}

    # Everything the gate needs is read before anything is written or registered.
    gate_metric = config.promotion_metric(data_summary["format"])
    registry_name = export.registry_name(zenml_model_name())
    champion = None
    if registry_name:
        if gate_metric not in metrics:
            raise ValueError(f"promotion.metric {gate_metric!r} was not computed in this run, so the new version "
                             f"cannot be gated; computed: {', '.join(sorted(metrics))}")
        champion = current_champion(registry_name, gate_metric)

    vllm_warning = check_vllm_rank(config.adapter.r) if export.include_adapter else None
    model, tokenizer = load_exported(merged_model.path)
    rows = first_rows(eval_dataset, export.verify_prompts)
    card = model_card(base_model.display_name, data_summary, config.model_dump(mode="json"), metrics, method)
    out = write_export(model, tokenizer, Path(export.output_dir), card, overwrite=export.overwrite,
                       max_shard_size=export.max_shard_size,
                       adapter_dir=trained_adapter.path if export.include_adapter else None,
                       gguf_types=export.gguf, check_rows=rows)
    exported, exported_tokenizer, reload_diff = verify_export(out, model, rows)
    metrics["export_reload_max_abs_logit_diff"] = reload_diff
    metrics.update(gguf_metrics(out))

    tracking.log_params(flatten(config))
    tracking.log_metrics({**metrics, **step_wall_seconds()})  # all, so a run with cached steps is complete too
    tracking.log_text(card, "model_card.md")
    tracking.log_dict(run_config, "run_config.yaml")
    tracking.log_table(samples, "eval_samples.json")
    for file in sorted(out.glob("*.gguf")) + sorted(out.glob("Modelfile")) + sorted(out.glob("gguf_check.json")):
        tracking.log_artifact(file, "gguf")
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
                          max_regression=gate.max_regression, eval_fingerprint=tuned.eval_fingerprint)
        apply_decision(registry_name, registered["version"], decision, tuned.eval_fingerprint)
        tracking.log_dict(decision.as_dict(), "promotion.json")
        tracking.log_metrics({"promotion_promoted": float(decision.promoted)})
        registered.update(promotion=decision.alias, promotion_reason=decision.reason)
    if export.push_to_hub:
        registered["hub_commit_url"] = push_to_hub(out, export.push_to_hub, export.hub_private)
    summary = {"export_dir": str(out.resolve()), **metrics, **registered}
    if vllm_warning:
        summary["vllm_warning"] = vllm_warning
    tracking.set_description(run_description(base_model.display_name, data_summary, run_config, summary))
    log_metadata(metadata=summary)
    stage = record_on_model_version(summary, decision.promoted if decision else None)
    if stage:
        summary["zenml_model_stage"] = stage
    return str(out.resolve()), Report(summary, export_views(card, samples, summary))
