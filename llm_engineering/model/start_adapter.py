"""The adapter a preference run starts from: an earlier SFT run's trained adapter, found by the model version that run
registered (the run logged the adapter as its `lora_adapter` model), or a directory holding a PEFT adapter.

ZenML artifacts (`zenml:NAME[:VERSION]`) are resolved by the pipeline's step, which may use ZenML; this module does not.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from llm_engineering.tracking import ADAPTER_MODEL_NAME

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class StartAdapterError(ValueError):
    pass


def source_kind(source: str) -> str:
    """"registry", "zenml" or "path"."""
    if source.startswith("models:/"):
        return "registry"
    return "zenml" if source.startswith("zenml:") else "path"


def check_adapter_dir(path: Path, source: str) -> Path:
    missing = [name for name in ADAPTER_FILES if not (path / name).is_file()]
    if missing:
        raise StartAdapterError(f"preference.start_adapter {source!r}: {path} holds no PEFT adapter (missing "
                                f"{', '.join(missing)}; safetensors only, pickles are not loaded)")
    return path


def registered_adapter(source: str, tracking_uri: Optional[str] = None):
    """The `lora_adapter` logged model of the run that registered `models:/NAME@ALIAS` or `models:/NAME/VERSION`."""
    import mlflow
    from mlflow.exceptions import MlflowException

    name, alias, version = re.fullmatch(r"models:/([^/@]+)(?:@([\w-]+)|/(\d+))", source).groups()
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    try:
        found = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException as exc:
        raise StartAdapterError(f"preference.start_adapter {source!r}: not in the registry at "
                                f"{tracking_uri or mlflow.get_tracking_uri()} ({exc.message.splitlines()[0]}); "
                                f"versions of {name}: {_versions(client, name)}") from None
    run = client.get_run(found.run_id)
    models = client.search_logged_models([run.info.experiment_id], filter_string=(
        f"source_run_id = '{found.run_id}' AND name = '{ADAPTER_MODEL_NAME}'"))
    if not models:
        raise StartAdapterError(f"preference.start_adapter {source!r}: version {found.version}'s run "
                                f"{found.run_id} logged no {ADAPTER_MODEL_NAME} model (was it registered by the "
                                "finetune pipeline?)")
    return models[0]


def _versions(client, name: str) -> str:
    """"1 (champion); 2 (challenger)", or that the name is not registered."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException:
        return "none: the model is not registered"
    aliases: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    versions = sorted({int(v.version) for v in client.search_model_versions(f"name = '{name}'")})
    return "; ".join(f"{v} ({', '.join(sorted(aliases.get(str(v), []))) or 'no alias'})" for v in versions) or "none"


def fetch_start_adapter(source: str, dest: Path, tracking_uri: Optional[str] = None) -> Path:
    """Copy the adapter `source` names (registry or directory) into `dest`; StartAdapterError naming what is wrong."""
    if source_kind(source) == "registry":
        import mlflow

        model = registered_adapter(source, tracking_uri)
        with tempfile.TemporaryDirectory() as scratch:
            fetched = Path(mlflow.artifacts.download_artifacts(artifact_uri=model.artifact_location,
                                                               dst_path=scratch, tracking_uri=tracking_uri))
            check_adapter_dir(fetched, source)
            _copy_files(fetched, dest)
        return dest
    path = Path(source).expanduser()
    if not path.is_dir():
        raise StartAdapterError(f"preference.start_adapter {source!r}: no such directory")
    _copy_files(check_adapter_dir(path, source), dest)
    return dest


def check_start_adapter(source: Optional[str], tracking_uri: Optional[str] = None) -> None:
    """Before any step runs: the registered version exists and logged an adapter, or the directory holds one."""
    if not source or source_kind(source) == "zenml":
        return
    if source_kind(source) == "registry":
        registered_adapter(source, tracking_uri)
    else:
        path = Path(source).expanduser()
        if not path.is_dir():
            raise StartAdapterError(f"preference.start_adapter {source!r}: no such directory")
        check_adapter_dir(path, source)


def _copy_files(src: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for file in src.iterdir():
        if file.is_file():
            shutil.copy2(file, dest / file.name)
