"""The checks both pipelines make when they compile, before any step runs."""

from pathlib import Path

from llm_engineering.config import RunConfig
from llm_engineering.data.preference import check_rows_match_pipeline
from llm_engineering.evaluation.compile_checks import check_evaluation
from llm_engineering.export.export_dir import check_push_credentials, check_target
from llm_engineering.export.gguf_file import check_model_supports_gguf
from llm_engineering.training.rewards import check_rewards


def check_run(cfg: RunConfig, pipeline: str) -> str:
    """Rows of the kind `pipeline` trains on, an export target, credentials, GGUF support, GRPO's reward functions and
    an evaluation that can run; returns the task metric ("auto" until the data format is known)."""
    check_rows_match_pipeline(cfg.data, pipeline)
    check_rewards(cfg.preference)
    check_target(Path(cfg.export.output_dir), cfg.export.overwrite)
    check_push_credentials(cfg.export.push_to_hub)
    check_model_supports_gguf(cfg.model, cfg.export.gguf)
    return check_evaluation(cfg)
