"""The registry gate: does a newly registered model version replace the current champion?

The champion is whichever version carries the MLflow alias `champion`; its score is the gate metric of the run that
logged it, so the comparison always uses numbers computed by the same evaluation. Each rule decides on evidence, not
on single items: with per-item scores (`Evidence`) "beats the champion" is a paired difference over the same eval
items and "lost general ability" a per-item drop, each with its 95 % interval (`intervals.py`); an interval that
spans the threshold is "cannot tell", with about how many items would tell, and never promotes. A version is
champion only if it beats that score by more than the margin, was evaluated on the same eval data (the
`eval_fingerprint` tag of both versions), and did not lose more general ability than `max_regression` (general_drop,
or the regression probes' drop where the general check is off). Any other version gets the alias
`challenger` (the latest one holds it) with the reason, so both stay one click away in the MLflow UI and loadable as
`models:/<name>@champion` / `@challenger`.

A preference run (DPO, ORPO from a start adapter) is registered under its own name, so its champion comparison alone
would promote a first run that made the model it started from worse. Its gate also compares it with that start
model's own score on the same evaluation: below it, it is a challenger whatever the registry holds.

The export step reads the champion (`current_champion`) before it registers anything, so a champion the new version
cannot be compared with stops the step with nothing registered.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

from llm_engineering.intervals import Interval, mean_interval, paired_difference

CHAMPION, CHALLENGER = "champion", "challenger"
EVAL_FINGERPRINT_TAG = "eval_fingerprint"


@dataclass(frozen=True)
class Champion:
    version: str
    score: float
    eval_fingerprint: Optional[str]
    items: tuple = ()  # its task score per eval item (its run's eval table), for a paired comparison


@dataclass(frozen=True)
class Evidence:
    """The per-item scores behind the gate's numbers, so it decides on intervals rather than on point values.
    Without them (an older champion, a metric that is not per item, such as perplexity) it compares the points."""
    candidate: Sequence[float] = ()  # the candidate's task score per eval item
    base: Sequence[float] = ()  # the base model's on the same items (reported: the gain the fine-tune made)
    start: Sequence[float] = ()  # a preference run's start model's
    regression: Sequence[float] = ()  # per item, how much general ability was lost (base minus fine-tune)
    regression_metric: str = "regression_drop"


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
    intervals: dict = field(default_factory=dict)  # name -> Interval.as_dict(): what the decision rested on

    def as_dict(self) -> dict:
        return asdict(self)


def decide(metric: str, candidate: float, champion, margin: float, higher_is_better: bool = True,
           champion_version: Optional[str] = None, regression_drop: Optional[float] = None,
           max_regression: Optional[float] = None, eval_fingerprint: Optional[str] = None,
           start: Optional[float] = None, evidence: Optional[Evidence] = None) -> Decision:
    """`champion`: a Champion, its score (a float), or None when there is none yet. `start`: a preference run's
    start model scored on the same metric; a candidate worse than it is never champion. `evidence`: per-item scores;
    with them each rule decides on a 95 % interval and says so when the items are too few to decide."""
    evidence = evidence or Evidence()
    champion_items = champion.items if isinstance(champion, Champion) else ()
    if isinstance(champion, Champion):
        champion_version, champion_fingerprint, champion = champion.version, champion.eval_fingerprint, champion.score
    else:
        champion_fingerprint = eval_fingerprint
    sign = 1.0 if higher_is_better else -1.0
    intervals: dict[str, Interval] = {}
    if evidence.candidate and len(evidence.base) == len(evidence.candidate):
        intervals["gain_over_base"] = paired_difference(_signed(evidence.candidate, sign), _signed(evidence.base, sign))

    def verdict(promoted: bool, reason: str) -> Decision:
        return Decision(promoted, CHAMPION if promoted else CHALLENGER, metric, candidate, champion,
                        champion_version, margin, reason, regression_drop, start,
                        {name: interval.as_dict() for name, interval in intervals.items()})

    lost = _general_ability_lost(evidence, regression_drop, max_regression, intervals)
    if lost:
        return verdict(False, lost)
    worse = _worse_than_start(metric, candidate, start, evidence, sign, intervals,
                              better=lambda a, b: sign * (a - b) > 0)
    if worse:
        return verdict(False, worse)
    kept = f"; the start model scored {start:.4g}" if start is not None else ""
    if champion is None:
        gain = f"; {metric} gained {intervals['gain_over_base']} over the base model" if "gain_over_base" in \
            intervals else ""
        return verdict(True, "no champion yet" + kept + gain + _kept_note(evidence, intervals, max_regression))
    if champion_fingerprint != eval_fingerprint:
        return verdict(False, f"champion v{champion_version} was evaluated on other eval data (eval_fingerprint "
                              f"{str(champion_fingerprint)[:12]} vs {str(eval_fingerprint)[:12]}), so {metric} "
                              "cannot be compared; move the champion alias by hand to pick one")
    direction = "higher" if higher_is_better else "lower"
    if champion_items and len(champion_items) == len(evidence.candidate):
        diff = intervals["gain_over_champion"] = paired_difference(_signed(evidence.candidate, sign),
                                                                   _signed(champion_items, sign))
        rule = (f"(rule: champion only if the paired difference's 95 % interval lies above promotion.margin "
                f"{margin:g}; {direction} is better){kept}")
        if diff.low > margin:
            return verdict(True, f"{metric} {candidate:.4g} beats champion v{champion_version} ({champion:.4g}): "
                                 f"paired difference {diff} {rule}" + _kept_note(evidence, intervals, max_regression))
        if diff.high <= margin:
            return verdict(False, f"{metric} {candidate:.4g} does not beat champion v{champion_version} "
                                  f"({champion:.4g}): paired difference {diff} {rule}")
        return verdict(False, f"{metric} cannot tell {candidate:.4g} from champion v{champion_version}'s "
                              f"{champion:.4g} on {diff.n} items: paired difference {diff} spans the margin "
                              f"{margin:g}{_needed(diff, margin)} {rule}")
    gain = sign * (candidate - champion)
    promoted = gain > margin
    relation = "beats" if promoted else "does not beat"
    return verdict(promoted, f"{metric} {candidate:.4g} {relation} champion v{champion_version} ({champion:.4g}) "
                             f"by more than {margin:g} ({direction} is better){kept}")


def _signed(values: Sequence[float], sign: float) -> list[float]:
    return [sign * v for v in values]


def _needed(interval: Interval, threshold: float) -> str:
    needed = interval.items_to_resolve(threshold)
    return f"; about {needed} items would decide it at this difference" if needed else ""


def _general_ability_lost(evidence: Evidence, regression_drop, max_regression, intervals) -> Optional[str]:
    """The reason the candidate may not be champion for its general ability, or None. With per-item drops: lost when
    the drop's interval lies above the cap, undecided (so not champion) when it spans the cap."""
    if max_regression is None:
        return None
    name = evidence.regression_metric
    if evidence.regression:
        drop = intervals[name] = mean_interval(evidence.regression)
        rule = f"(rule: champion only if the 95 % interval lies below promotion.max_regression {max_regression:g})"
        if drop.low > max_regression:
            return (f"{name} {drop} is above promotion.max_regression {max_regression:g}: the fine-tune lost "
                    f"general ability {rule} (see the eval table's general and regression rows)")
        if drop.high > max_regression:
            return (f"{name} {drop} spans promotion.max_regression {max_regression:g}: too few items to tell a "
                    f"drop that size from noise{_needed(drop, max_regression)} {rule}")
        return None
    if regression_drop is not None and regression_drop > max_regression:
        return (f"regression_drop {regression_drop:.3g} exceeds promotion.max_regression {max_regression:g}: "
                "the fine-tune lost general ability (see the regression samples in the eval table)")
    return None


def _worse_than_start(metric, candidate, start, evidence: Evidence, sign, intervals, better) -> Optional[str]:
    if start is None:
        return None
    if evidence.candidate and len(evidence.start) == len(evidence.candidate):
        intervals["gain_over_start"] = paired_difference(_signed(evidence.candidate, sign), _signed(evidence.start,
                                                                                                   sign))
    if not better(start, candidate):
        return None
    paired = f" (paired difference {intervals['gain_over_start']})" if "gain_over_start" in intervals else ""
    return (f"{metric} {candidate:.4g} is worse than the {start:.4g} of the model this run started from{paired}: "
            "the tuning lost some of the task, so the start model stays the one to use (see the start_output and "
            "finetuned_output columns of the eval table)")


def _kept_note(evidence: Evidence, intervals, max_regression) -> str:
    name = evidence.regression_metric
    if name not in intervals:
        return ""
    return f"; {name} {intervals[name]} below promotion.max_regression {max_regression:g}"


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
    return Champion(current.version, score, current.tags.get(EVAL_FINGERPRINT_TAG), _task_items(client, current.run_id))


def _task_items(client, run_id: str) -> tuple:
    """The per-item task scores in a run's eval table (`eval_samples.json`), () when it has none."""
    import json
    import tempfile

    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, "eval_samples.json", tmp)
        except (MlflowException, OSError):
            return ()
        table = json.loads(open(path, encoding="utf-8").read())
    columns = table.get("columns", [])
    if "set" not in columns or "finetuned_score" not in columns:
        return ()
    kind, score = columns.index("set"), columns.index("finetuned_score")
    return tuple(float(row[score]) for row in table.get("data", []) if row[kind] == "task")


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
                            eval_fingerprint: Optional[str] = None, start: Optional[float] = None,
                            evidence: Optional[Evidence] = None) -> Decision:
    """Compare `version` of registered model `name` with the current champion (and a preference run's `start`
    score) and move the aliases accordingly."""
    champion = current_champion(name, metric, tracking_uri, excluding=version)
    decision = decide(metric, candidate, champion, margin, higher_is_better, regression_drop=regression_drop,
                      max_regression=max_regression, eval_fingerprint=eval_fingerprint, start=start,
                      evidence=evidence)
    apply_decision(name, version, decision, eval_fingerprint, tracking_uri)
    return decision
