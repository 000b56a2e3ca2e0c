"""ZenML's side of `preference.start_adapter`: ZenML artifacts (`zenml:NAME` or `zenml:NAME:VERSION`) looked up in the
active store, and the registry looked up through the active stack's MLflow tracker."""

from __future__ import annotations

from typing import Optional

from zenml.client import Client

from llm_engineering.model.start_adapter import StartAdapterError, check_start_adapter, source_kind

KEY = "preference.start_adapter"


def artifact_version(name_and_version: str):
    """The artifact version NAME[:VERSION] names (the latest when no version), or StartAdapterError."""
    name, _, version = name_and_version.partition(":")
    try:
        return Client().get_artifact_version(name, version or None)
    except KeyError:
        known = sorted({a.name for a in Client().list_artifacts(size=50)})
        which = f"version {version} of {name}" if version else name
        raise StartAdapterError(f"{KEY} 'zenml:{name_and_version}': no artifact {which} in the ZenML store; "
                                f"artifacts: {', '.join(known) or 'none'}") from None


def stack_tracking_uri() -> Optional[str]:
    tracker = Client().active_stack.experiment_tracker
    return tracker.get_tracking_uri() if tracker is not None and hasattr(tracker, "get_tracking_uri") else None


def check_start_adapter_source(source: Optional[str]) -> None:
    """When the pipeline compiles: the start adapter `source` names exists, so no step runs for nothing."""
    if source and source_kind(source) == "zenml":
        artifact_version(source.removeprefix("zenml:"))
    else:
        check_start_adapter(source, stack_tracking_uri())
