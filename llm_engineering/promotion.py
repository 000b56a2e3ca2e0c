"""The registry gate: does a newly registered model version replace the current champion?

The champion is whichever version carries the MLflow alias `champion`; its score is the gate metric of the run that
logged it, so the comparison always uses numbers computed by the same evaluation. A version that does not beat the
champion by more than the margin gets the alias `challenger` (the latest one holds it), so both stay one click away
in the MLflow UI and loadable as `models:/<name>@champion` / `@challenger`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

CHAMPION, CHALLENGER = "champion", "challenger"


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

    def as_dict(self) -> dict:
        return asdict(self)


def decide(metric: str, candidate: float, champion: Optional[float], margin: float, higher_is_better: bool = True,
           champion_version: Optional[str] = None) -> Decision:
    if champion is None:
        return Decision(True, CHAMPION, metric, candidate, None, None, margin, "no champion yet")
    gain = candidate - champion if higher_is_better else champion - candidate
    promoted = gain > margin
    relation = "beats" if promoted else "does not beat"
    reason = (f"{metric} {candidate:.4g} {relation} champion v{champion_version} ({champion:.4g}) "
              f"by more than {margin:g} ({'higher' if higher_is_better else 'lower'} is better)")
    return Decision(promoted, CHAMPION if promoted else CHALLENGER, metric, candidate, champion, champion_version,
                    margin, reason)


def gate_registered_version(name: str, version: str, metric: str, candidate: float, margin: float,
                            higher_is_better: bool = True, tracking_uri: Optional[str] = None) -> Decision:
    """Compare `version` of registered model `name` with the current champion and move the aliases accordingly."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    champion_score, champion_version = None, None
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:  # no alias yet: the first version becomes champion
        current = None
    if current is not None and current.version != str(version):
        champion_version = current.version
        champion_score = client.get_run(current.run_id).data.metrics.get(metric) if current.run_id else None
        if champion_score is None:
            raise ValueError(f"promotion: champion {name} v{champion_version} has no metric {metric!r} in its run, so "
                             "the new version cannot be compared with it; set promotion.metric to a metric both runs "
                             "logged, or move the champion alias by hand")
    decision = decide(metric, candidate, champion_score, margin, higher_is_better, champion_version)
    client.set_registered_model_alias(name, decision.alias, str(version))
    client.set_model_version_tag(name, str(version), "promotion", decision.alias)
    client.set_model_version_tag(name, str(version), metric, str(candidate))
    return decision
