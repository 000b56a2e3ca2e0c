"""Idempotent local set-up: a ZenML repository, a local stack with an MLflow experiment tracker whose tracking store is a
SQLite database in the project, and the embedded model converted once.

    python -m llm_engineering.orchestration.stack [--root DIR]
    python -m llm_engineering.orchestration.stack --comet [--comet-offline DIR]   # the same stack, tracked in Comet
    python -m llm_engineering.orchestration.stack --s3 s3://BUCKET/PREFIX [--s3-endpoint-url URL] [--s3-secret NAME]
                                                  # the same stack, its artifacts (and checkpoints) in S3 / MinIO

Running it again changes nothing. Tests call `ensure_local_stack` with their own root and ZENML_CONFIG_PATH.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Optional

from zenml.client import Client
from zenml.enums import StackComponentType
from zenml.exceptions import EntityExistsError

from llm_engineering.model.embedded import embedded_model_dir

logger = logging.getLogger(__name__)

STACK_NAME = "llm_engineering_local"
TRACKER_NAME = "mlflow_tracker"
STEP_OPERATOR_NAME = "local_cuda"
EXPERIMENT_NAMES = ("finetune", "preference")  # one MLflow experiment per pipeline (ZenML's tracker names them)


def tracking_uri(root: Path) -> str:
    return f"sqlite:///{(root / '.mlflow' / 'mlflow.db').resolve()}"


def ensure_mlflow_store(root: Path) -> str:
    """Create the SQLite tracking DB and our experiments, with artifacts under `.mlflow/artifacts` (else MLflow would
    put an experiment ZenML creates under ./mlruns of whatever directory the run started in)."""
    import mlflow

    uri = tracking_uri(root)
    artifacts = (root / ".mlflow" / "artifacts").resolve()
    artifacts.mkdir(parents=True, exist_ok=True)
    client = mlflow.MlflowClient(tracking_uri=uri)
    for name in EXPERIMENT_NAMES:
        if client.get_experiment_by_name(name) is None:  # finetune's runs directly under artifacts/, as before
            location = artifacts if name == EXPERIMENT_NAMES[0] else artifacts / name
            client.create_experiment(name, artifact_location=location.as_uri())
    return uri


def _ensure_flavor(client: Client, source: str, kind: StackComponentType) -> None:
    """Register one of our custom flavors (by its import path) once."""
    from zenml.stack.flavor import validate_flavor_source

    _, flavor = validate_flavor_source(source=source, component_type=kind)
    try:
        client.get_flavor_by_name_and_type(flavor.name, kind)
    except KeyError:
        client.create_flavor(source, kind)


def _ensure_component(client: Client, kind: StackComponentType, name: str, flavor: str, config: dict) -> None:
    try:
        existing = client.get_stack_component(kind, name, allow_name_prefix_match=False)
    except KeyError:
        existing = None
    if existing is None:
        try:
            client.create_stack_component(name=name, flavor=flavor, component_type=kind, configuration=config)
        except EntityExistsError:
            pass
    elif existing.configuration.get("tracking_uri") != config.get("tracking_uri"):
        client.update_stack_component(name, kind, configuration=config)


def ensure_local_stack(root: Path) -> str:
    """Set up (or confirm) everything the default pipeline needs under `root`; returns the MLflow tracking URI."""
    root = root.resolve()
    if not (root / ".zen").is_dir():
        Client.initialize(root=root)
    client = Client()
    client.activate_root(root)  # so the stack below becomes this repository's active stack, not only the global one
    uri = ensure_mlflow_store(root)
    _ensure_component(client, StackComponentType.EXPERIMENT_TRACKER, TRACKER_NAME, "mlflow", {"tracking_uri": uri})
    _ensure_flavor(client, "llm_engineering.orchestration.local_cuda_step_operator.LocalCudaStepOperatorFlavor",
                   StackComponentType.STEP_OPERATOR)
    _ensure_component(client, StackComponentType.STEP_OPERATOR, STEP_OPERATOR_NAME, "local_cuda", {})
    components = {
        StackComponentType.ORCHESTRATOR: "default",
        StackComponentType.ARTIFACT_STORE: "default",
        StackComponentType.EXPERIMENT_TRACKER: TRACKER_NAME,
        StackComponentType.STEP_OPERATOR: STEP_OPERATOR_NAME,  # used only by steps whose config names it
    }
    try:
        stack = client.get_stack(STACK_NAME, allow_name_prefix_match=False)
        if StackComponentType.STEP_OPERATOR not in stack.components:  # a stack set up by an older version
            client.update_stack(STACK_NAME, component_updates={StackComponentType.STEP_OPERATOR: [STEP_OPERATOR_NAME]})
    except KeyError:
        client.create_stack(name=STACK_NAME, components=components)
    client.activate_stack(STACK_NAME)
    embedded_model_dir()
    return uri


COMET_STACK_NAME = "llm_engineering_comet"
COMET_TRACKER_NAME = "comet_tracker"


def ensure_comet_stack(root: Path, offline_directory: Optional[Path] = None, workspace: Optional[str] = None,
                       project_name: Optional[str] = None) -> str:
    """The local stack with Comet as experiment tracker (our flavor: ZenML's plus an offline mode). Online, the API
    key comes from the ZenML secret `comet` (`zenml secret create comet --api_key=...`) if it exists, else from
    COMET_API_KEY at run time. Returns the stack name."""
    from llm_engineering.orchestration.comet import FLAVOR

    ensure_local_stack(root)
    client = Client()
    _ensure_flavor(client, "llm_engineering.orchestration.comet.CometTrackerFlavor",
                   StackComponentType.EXPERIMENT_TRACKER)
    config: dict = {"workspace": workspace, "project_name": project_name or "llm-engineering"}
    if offline_directory is not None:
        config.update(offline=True, offline_directory=str(offline_directory.resolve()))
    elif _secret_exists(client, "comet"):
        config["api_key"] = "{{comet.api_key}}"
    try:
        client.get_stack_component(StackComponentType.EXPERIMENT_TRACKER, COMET_TRACKER_NAME,
                                   allow_name_prefix_match=False)
        client.update_stack_component(COMET_TRACKER_NAME, StackComponentType.EXPERIMENT_TRACKER, configuration=config)
    except KeyError:
        client.create_stack_component(name=COMET_TRACKER_NAME, flavor=FLAVOR,
                                      component_type=StackComponentType.EXPERIMENT_TRACKER, configuration=config)
    try:
        client.get_stack(COMET_STACK_NAME, allow_name_prefix_match=False)
    except KeyError:
        client.create_stack(name=COMET_STACK_NAME, components={
            StackComponentType.ORCHESTRATOR: "default", StackComponentType.ARTIFACT_STORE: "default",
            StackComponentType.EXPERIMENT_TRACKER: COMET_TRACKER_NAME,
            StackComponentType.STEP_OPERATOR: STEP_OPERATOR_NAME})
    client.activate_stack(COMET_STACK_NAME)
    return COMET_STACK_NAME


S3_STACK_NAME = "llm_engineering_s3"
S3_STORE_NAME = "s3_store"


def ensure_s3_stack(root: Path, path: str, endpoint_url: Optional[str] = None, secret: str = "s3") -> str:
    """The local stack with ZenML's S3 artifact store at `path` (AWS, or any S3 API: MinIO, Ceph, moto, through
    `endpoint_url`); credentials from the ZenML secret `secret` (`zenml secret create s3 --aws_access_key_id=...
    --aws_secret_access_key=...`), checked before anything is registered. Returns the stack name."""
    if not path.startswith("s3://"):
        raise ValueError(f"--s3 {path!r}: give the bucket as s3://BUCKET[/PREFIX]")
    import importlib.util

    if importlib.util.find_spec("s3fs") is None:
        raise ValueError("ZenML's S3 artifact store needs s3fs: pip install 'llm-engineering[s3]'")
    if not _secret_exists(Client(), secret):  # refused before the local set-up changes the active stack
        raise ValueError(f"the ZenML secret {secret!r} with the S3 credentials does not exist: `zenml secret create "
                         f"{secret} --aws_access_key_id=... --aws_secret_access_key=...`")
    ensure_local_stack(root)
    client = Client()
    config: dict = {"path": path, "authentication_secret": secret}
    if endpoint_url:
        config["client_kwargs"] = {"endpoint_url": endpoint_url}
    try:
        client.get_stack_component(StackComponentType.ARTIFACT_STORE, S3_STORE_NAME, allow_name_prefix_match=False)
        client.update_stack_component(S3_STORE_NAME, StackComponentType.ARTIFACT_STORE, configuration=config)
    except KeyError:
        client.create_stack_component(name=S3_STORE_NAME, flavor="s3", component_type=StackComponentType.ARTIFACT_STORE,
                                      configuration=config)
    try:
        client.get_stack(S3_STACK_NAME, allow_name_prefix_match=False)
    except KeyError:
        client.create_stack(name=S3_STACK_NAME, components={
            StackComponentType.ORCHESTRATOR: "default", StackComponentType.ARTIFACT_STORE: S3_STORE_NAME,
            StackComponentType.EXPERIMENT_TRACKER: TRACKER_NAME, StackComponentType.STEP_OPERATOR: STEP_OPERATOR_NAME})
    client.activate_stack(S3_STACK_NAME)
    return S3_STACK_NAME


def _secret_exists(client: Client, name: str) -> bool:
    try:
        client.get_secret(name, allow_partial_name_match=False)
        return True
    except KeyError:
        return False


def main() -> None:
    from llm_engineering.orchestration.process import prepare_process

    prepare_process()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="project root (default: current directory)")
    parser.add_argument("--comet", action="store_true", help="track in Comet instead of MLflow")
    parser.add_argument("--comet-offline", type=Path, metavar="DIR", help="Comet offline archives go to DIR")
    parser.add_argument("--s3", metavar="s3://BUCKET/PREFIX", help="keep the artifacts in this S3 bucket")
    parser.add_argument("--s3-endpoint-url", metavar="URL", help="an S3 API other than AWS's (MinIO, Ceph, ...)")
    parser.add_argument("--s3-secret", default="s3", metavar="NAME", help="the ZenML secret with the credentials")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    if args.s3:
        try:
            stack = ensure_s3_stack(args.root, args.s3, args.s3_endpoint_url, args.s3_secret)
        except ValueError as exc:
            raise SystemExit(f"error: {exc}") from None
        print(f"stack '{stack}' active; artifacts in {args.s3}")
        return
    if args.comet or args.comet_offline:
        stack = ensure_comet_stack(args.root, args.comet_offline)
        print(f"stack '{stack}' active (Comet{' offline: ' + str(args.comet_offline) if args.comet_offline else ''})")
        return
    uri = ensure_local_stack(args.root)
    print(f"stack '{STACK_NAME}' active; MLflow tracking store: {uri}; embedded model: {embedded_model_dir()}")


if __name__ == "__main__":
    main()
