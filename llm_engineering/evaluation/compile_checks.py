"""What this run's evaluation will compute, checked when the pipeline compiles: a task metric that the data cannot
support (answers scored on plain text) or a gate metric no step will log is refused before any step runs, not after
training."""

from __future__ import annotations

from pathlib import Path

from llm_engineering.config import ConfigError, RunConfig, SourceConfig
from llm_engineering.data.formats import detect_format, rename_columns
from llm_engineering.data.sources import inputs_digest, peek_rows
from llm_engineering.evaluation import ROLES

EVALUATION_PREFIXES = ("base_", "finetuned_", "regression_", "general_")


def expected_format(cfg: RunConfig) -> str:
    """"text" when every source is plain text, "auto" when a source's format is known only once it is read (a hub
    dataset, a file not on this machine), else the chat format (or "chat" for a mixture of chat formats)."""
    formats = set()
    for src in cfg.data.source_list():
        if src.format != "auto":
            formats.add(src.format)
        elif src.source == "synthetic":
            formats.add("messages")
        elif src.source == "file":
            formats.add(detect_format([rename_columns(r, src.columns) for r in peek_rows(src)]) or "auto")
        else:
            formats.add("auto")
    if "auto" in formats:
        return "auto"
    return formats.pop() if len(formats) == 1 else ("chat" if "text" not in formats else "mixed")


def evaluation_files_digest(evaluation) -> str:
    """The content digest of the evaluation's own files (eval_file, regression.file): a cache key part, so an edited
    file is scored again."""
    sources = [SourceConfig(source="file", path=p) for p in (evaluation.eval_file, evaluation.regression.file) if p]
    return inputs_digest(sources)


def computable_metrics(cfg: RunConfig, data_format: str) -> list[str]:
    metric = cfg.task_metric(data_format)
    per_model = ["perplexity"] + ([metric, "stop_rate"] if metric != "perplexity" else [])
    if cfg.eval.regression.enabled:
        per_model.append("regression_score")
    if cfg.eval.regression.general_prompts:
        per_model += ["general_probability", "general_agreement"]
    names = [f"{role}_{name}" for role in ROLES for name in per_model]
    names += (["regression_drop"] if cfg.eval.regression.enabled else [])
    names += (["general_drop", "general_top1_drop"] if cfg.eval.regression.general_prompts else [])
    return names


def check_evaluation(cfg: RunConfig) -> str:
    """The task metric this run scores ("auto" when the data format is not known yet); ConfigError for a metric the
    data cannot support, a gate metric the evaluation will not log, or a missing evaluation file."""
    data_format = expected_format(cfg)
    metric = cfg.task_metric(data_format)
    if data_format == "text" and metric != "perplexity":
        raise ConfigError(f"eval.metric: {metric} scores generated answers, but the data is plain text (no answers "
                          "to score): use eval.metric: perplexity, or auto")
    for key, path in (("eval.eval_file", cfg.eval.eval_file), ("eval.regression.file", cfg.eval.regression.file)):
        if path and not Path(path).is_file():
            raise ConfigError(f"{key}: file not found: {path}")
    harness = cfg.eval.harness
    if harness.tasks:
        from llm_engineering.evaluation.harness import unknown_tasks

        unknown = unknown_tasks(harness.tasks, harness.include_path)
        if unknown:
            raise ConfigError(f"eval.harness.tasks: unknown to lm-evaluation-harness: {', '.join(unknown)}"
                              + (f" (nor in include_path {harness.include_path})" if harness.include_path else ""))
    gate = cfg.promotion_metric(data_format)
    if cfg.export.registered_model_name and data_format != "auto" and gate.startswith(EVALUATION_PREFIXES):
        known = computable_metrics(cfg, data_format)
        if gate not in known:
            raise ConfigError(f"promotion.metric: {gate!r} is not computed by this run's evaluation (data format "
                              f"{data_format}, eval.metric {cfg.eval.metric}), so no version could be gated; "
                              f"computed: {', '.join(known)}")
    return metric
