"""The checks both pipelines make when they compile, before any step runs."""

from pathlib import Path

from llm_engineering.config import RunConfig
from llm_engineering.data.preference import check_rows_match_pipeline
from llm_engineering.evaluation.compile_checks import check_evaluation, evaluation_files_digest
from llm_engineering.export.export_dir import check_push_credentials, check_target
from llm_engineering.export.gguf_file import check_model_supports_gguf
from llm_engineering.model.gguf_source import check_gguf_source
from llm_engineering.training.rewards import check_rewards


def check_run(cfg: RunConfig, pipeline: str) -> str:
    """Rows of the kind `pipeline` trains on, a GGUF base model transformers can read, an export target, credentials,
    GGUF support, GRPO's reward functions and an evaluation that can run; returns the task metric ("auto" until the
    data format is known)."""
    check_rows_match_pipeline(cfg.data, pipeline)
    if cfg.model.source == "gguf":  # the file and its architecture, before any step converts it
        check_gguf_source(cfg.model.name_or_path)
    check_rewards(cfg.preference)
    check_target(Path(cfg.export.output_dir), cfg.export.overwrite)
    check_push_credentials(cfg.export.push_to_hub)
    check_model_supports_gguf(cfg.model, cfg.export.gguf)
    return check_evaluation(cfg)


def scoring_inputs(cfg: RunConfig, eval_dataset, data_summary, task_metric: str) -> dict:
    """What both evaluate steps score with, and so their cache key. The training rows enter it only where the
    evaluation needs them: the held-out split when there is no eval file, the data's format while the task metric is
    `auto`. So the base model's evaluation comes from the cache when only the training rows change (a new seed, more
    rows), instead of generating all its answers again."""
    return dict(eval_dataset=None if cfg.eval.eval_file else eval_dataset,
                data_summary=data_summary if task_metric == "auto" else None,
                task_metric=task_metric, dtype=cfg.merge.dtype, max_length=cfg.train.max_length,
                files_digest=evaluation_files_digest(cfg.eval))
