"""The evaluate stage (`evaluate.py`): one model scored on the eval rows and the regression probes; greedy generation
(`generation.py`) scored by the scorers in `llm_engineering/scoring.py`, perplexity, lm-evaluation-harness tasks
(`harness.py`) and the checks made when the pipeline compiles (`compile_checks.py`). The names below are its public
API."""

from llm_engineering.evaluation.evaluate import (  # noqa: F401
    PROBES, ROLES, ModelEvaluation, compare, eval_fingerprint, eval_rows, evaluate_checkpoint, evaluate_model,
    item_drops, item_scores, probe_rows,
)
from llm_engineering.evaluation.generation import evaluate_generation  # noqa: F401
from llm_engineering.evaluation.perplexity import perplexity  # noqa: F401
from llm_engineering.model.generation import generate  # noqa: F401
from llm_engineering.scoring import SCORERS, contains, json_equal, json_valid, rouge_l  # noqa: F401
