"""The registry gate: does a newly registered model version replace the current champion?

The champion is whichever version carries the MLflow alias `champion`; its score is the gate metric of the run that
logged it, so the comparison always uses numbers computed by the same evaluation. A version is champion only if it
beats that score by more than the margin, was evaluated on the same eval data (the `eval_fingerprint` tag of both
versions), and did not lose more of the regression probes than `max_regression`. Any other version gets the alias
`challenger` (the latest one holds it) with the reason, so both stay one click away in the MLflow UI and loadable as
`models:/<name>@champion` / `@challenger`.

A preference run (DPO, ORPO from a start adapter) is registered under its own name, so its champion comparison alone
would promote a first run that made the model it started from worse. Its gate also compares it with that start
model's own score on the same evaluation: below it, it is a challenger whatever the registry holds.

The export step reads the champion (`current_champion`) before it registers anything, so a champion the new version
cannot be compared with stops the step with nothing registered.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

CHAMPION, CHALLENGER = "champion", "challenger"
EVAL_FINGERPRINT_TAG = "eval_fingerprint"


@dataclass(frozen=True)
class Champion:
    version: str
    score: float
    eval_fingerprint: Optional[str]


@dataclass(frozen=True)
class Decision:
    promoted: bool
    alias: str
    metric: str
    candidate: float
    champion: Optional[float]
    champion_version: Optional[str]
    margin: float
    reason: str
    regression_drop: Optional[float] = None
    start: Optional[float] = None  # the score of the model a preference run started from

    def as_dict(self) -> dict:
        return asdict(self)


def decide(metric: str, candidate: float, champion, margin: float, higher_is_better: bool = True,
           champion_version: Optional[str] = None, regression_drop: Optional[float] = None,
           max_regression: Optional[float] = None, eval_fingerprint: Optional[str] = None,
           start: Optional[float] = None) -> Decision:
    """`champion`: a Champion, its score (a float), or None when there is none yet. `start`: a preference run's
    start model scored on the same metric; a candidate worse than it is never champion."""
    if isinstance(champion, Champion):
        champion_version, champion_fingerprint, champion = champion.version, champion.eval_fingerprint, champion.score
    else:
        champion_fingerprint = eval_fingerprint

    def challenger(reason: str) -> Decision:
        return Decision(False, CHALLENGER, metric, candidate, champion, champion_version, margin, reason,
                        regression_drop, start)

    def better(a: float, b: float) -> bool:
        return a > b if higher_is_better else a < b

    if max_regression is not None and regression_drop is not None and regression_drop > max_regression:
        return challenger(f"regression_drop {regression_drop:.3g} exceeds promotion.max_regression {max_regression:g}: "
                          "the fine-tune lost general ability (see the regression samples in the eval table)")
    if start is not None and better(start, candidate):
        return challenger(f"{metric} {candidate:.4g} is worse than the {start:.4g} of the model this run started from: "
                          "the tuning lost some of the task, so the start model stays the one to use (see the "
                          "start_output and finetuned_output columns of the eval table)")
    kept = f"; the start model scored {start:.4g}" if start is not None else ""
    if champion is None:
        return Decision(True, CHAMPION, metric, candidate, None, None, margin, "no champion yet" + kept,
                        regression_drop, start)
    if champion_fingerprint != eval_fingerprint:
        return challenger(f"champion v{champion_version} was evaluated on other eval data (eval_fingerprint "
                          f"{str(champion_fingerprint)[:12]} vs {str(eval_fingerprint)[:12]}), so {metric} "
                          "cannot be compared; move the champion alias by hand to pick one")
    gain = candidate - champion if higher_is_better else champion - candidate
    promoted = gain > margin
    relation = "beats" if promoted else "does not beat"
    reason = (f"{metric} {candidate:.4g} {relation} champion v{champion_version} ({champion:.4g}) "
              f"by more than {margin:g} ({'higher' if higher_is_better else 'lower'} is better){kept}")
    if not promoted:
        return challenger(reason)
    return Decision(True, CHAMPION, metric, candidate, champion, champion_version, margin, reason, regression_drop,
                    start)


def start_metric(gate_metric: str) -> str:
    """The start model's metric for a gate metric: `finetuned_json_exact_match` -> `start_json_exact_match`."""
    return "start_" + gate_metric.removeprefix("finetuned_")


def _is_missing(exc) -> bool:
    """MLflow's answer for "no such registered model" or "no such alias"; anything else (server down, permission)
    is a real error. MLflow reports a missing alias as INVALID_PARAMETER_VALUE "... alias ... not found"."""
    code = getattr(exc, "error_code", "")
    return code == "RESOURCE_DOES_NOT_EXIST" or (code == "INVALID_PARAMETER_VALUE" and "not found" in str(exc))


def current_champion(name: str, metric: str, tracking_uri: Optional[str] = None,
                     excluding: Optional[str] = None) -> Optional[Champion]:
    """The version holding `champion` with its `metric`, or None when there is no champion yet. Raises when the
    champion cannot be compared (no such metric in its run) or the registry cannot be read."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as exc:
        if _is_missing(exc):
            return None
        raise
    if excluding is not None and current.version == str(excluding):
        return None
    score = client.get_run(current.run_id).data.metrics.get(metric) if current.run_id else None
    if score is None:
        raise ValueError(f"promotion: champion {name} v{current.version} has no metric {metric!r} in its run, so the "
                         "new version cannot be compared with it; set promotion.metric to a metric both runs logged, "
                         "or move the champion alias by hand")
    return Champion(current.version, score, current.tags.get(EVAL_FINGERPRINT_TAG))


def apply_decision(name: str, version: str, decision: Decision, eval_fingerprint: Optional[str] = None,
                   tracking_uri: Optional[str] = None) -> None:
    """Move the alias the decision names to `version` and tag it with the decision and what it was evaluated on."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    client.set_registered_model_alias(name, decision.alias, str(version))
    client.set_model_version_tag(name, str(version), "promotion", decision.alias)
    client.set_model_version_tag(name, str(version), decision.metric, str(decision.candidate))
    if eval_fingerprint:
        client.set_model_version_tag(name, str(version), EVAL_FINGERPRINT_TAG, eval_fingerprint)


def gate_registered_version(name: str, version: str, metric: str, candidate: float, margin: float,
                            higher_is_better: bool = True, tracking_uri: Optional[str] = None,
                            regression_drop: Optional[float] = None, max_regression: Optional[float] = None,
                            eval_fingerprint: Optional[str] = None, start: Optional[float] = None) -> Decision:
    """Compare `version` of registered model `name` with the current champion (and a preference run's `start`
    score) and move the aliases accordingly."""
    champion = current_champion(name, metric, tracking_uri, excluding=version)
    decision = decide(metric, candidate, champion, margin, higher_is_better, regression_drop=regression_drop,
                      max_regression=max_regression, eval_fingerprint=eval_fingerprint, start=start)
    apply_decision(name, version, decision, eval_fingerprint, tracking_uri)
    return decision
