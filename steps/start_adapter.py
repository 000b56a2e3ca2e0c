from typing import Annotated

from zenml import log_metadata, step

from llm_engineering.artifacts import CheckpointDir, scratch_output
from llm_engineering.model.start_adapter import check_adapter_dir, fetch_start_adapter, source_kind
from llm_engineering.orchestration.process import prepare_process
from llm_engineering.orchestration.start_adapter_lookup import artifact_version

prepare_process()  # this process runs a step: noise filters, MLflow system metrics, materializers


@step(experiment_tracker=True, enable_cache=False)  # an alias moves: look it up on every run (a small copy)
def start_adapter(source: str) -> Annotated[CheckpointDir, "initial_adapter"]:
    """The adapter a preference run tunes: an earlier run's trained adapter, by registered model version
    (models:/NAME@ALIAS), ZenML artifact (zenml:NAME[:VERSION]) or directory."""
    with scratch_output("start-adapter-") as out:
        if source_kind(source) == "zenml":
            found = artifact_version(source.removeprefix("zenml:")).load()
            check_adapter_dir(found.path, source)
            fetch_start_adapter(str(found.path), out)
        else:
            fetch_start_adapter(source, out)  # the tracker's MLflow: the registry the SFT run registered in
    log_metadata(metadata={"start_adapter": source})
    return CheckpointDir(out, temporary=True)
