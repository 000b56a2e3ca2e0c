"""Stack recipes for GPU steps in the cloud (configs/stacks/*.yaml): validated against ZenML's own flavor classes,
then printed as the commands that register the stack and the run-config lines that send the GPU steps to it.

    python -m llm_engineering.orchestration.recipes kubernetes    # or sagemaker, vertex, modal, ssh

Secrets stay out of the files: values like "{{mlflow.password}}" are ZenML secret references, and cloud credentials
come from the ZenML service connector the commands register (`--auto-configure` reads your local cloud login).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import sys
from pathlib import Path

import yaml

RECIPES = Path(__file__).resolve().parents[2] / "configs" / "stacks"
GPU_STEPS = ("load_base_model", "inject_adapter", "train_sft", "merge_adapter",  # they load the model
             "evaluate_base", "evaluate_finetuned")
_I = "zenml.integrations."
# flavor -> (config class, settings class), importable without the cloud SDKs
STEP_OPERATORS = {
    "kubernetes": (_I + "kubernetes.flavors.kubernetes_step_operator_flavor.KubernetesStepOperatorConfig",
                   _I + "kubernetes.flavors.kubernetes_step_operator_flavor.KubernetesStepOperatorSettings"),
    "sagemaker": (_I + "aws.flavors.sagemaker_step_operator_flavor.SagemakerStepOperatorConfig",
                  _I + "aws.flavors.sagemaker_step_operator_flavor.SagemakerStepOperatorSettings"),
    "vertex": (_I + "gcp.flavors.vertex_step_operator_flavor.VertexStepOperatorConfig",
               _I + "gcp.flavors.vertex_step_operator_flavor.VertexStepOperatorSettings"),
    "modal": (_I + "modal.flavors.modal_step_operator_flavor.ModalStepOperatorConfig",
              _I + "modal.flavors.modal_step_operator_flavor.ModalStepOperatorSettings"),
    "ssh": (_I + "ssh.flavors.ssh_step_operator_flavor.SSHStepOperatorConfig",
            _I + "ssh.flavors.ssh_step_operator_flavor.SSHStepOperatorSettings"),
}
ARTIFACT_STORES = {"s3": _I + "s3.flavors.s3_artifact_store_flavor.S3ArtifactStoreConfig",
                   "gcp": _I + "gcp.flavors.gcp_artifact_store_flavor.GCPArtifactStoreConfig"}
TRACKERS = {"mlflow": _I + "mlflow.flavors.mlflow_experiment_tracker_flavor.MLFlowExperimentTrackerConfig"}
SECTIONS = {"step_operator", "step_settings", "artifact_store", "experiment_tracker", "connector"}


def _class(path: str):
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def _check(where: str, cls, values: dict) -> None:
    """Validate `values` with ZenML's class. Its config classes accept unknown keys, so a typo would be ignored
    silently: refuse it here. A credential field (ZenML's SecretField) must be a secret reference such as
    "{{mlflow.password}}", never a literal; references are checked for form, not resolved (no server here)."""
    from zenml.utils import secret_utils

    unknown = sorted(set(values) - set(cls.model_fields))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown} for {cls.__name__}; known: {sorted(cls.model_fields)}")
    resolved = dict(values)
    for key, value in values.items():
        secret = secret_utils.is_secret_field(cls.model_fields[key])
        if secret_utils.is_secret_reference(value):
            secret_utils.parse_secret_reference(value)  # raises on a malformed reference
            resolved[key] = "<secret>"
        elif secret and value is not None:
            raise ValueError(f"{where}: {key} is a credential: give a ZenML secret reference like "
                             f"'{{{{my_secret.{key}}}}}', not the value")
    try:
        cls.model_validate(resolved)
    except Exception as exc:
        raise ValueError(f"{where}: {exc}") from None


def _section(recipe: dict, name: str, where: str, flavors: dict) -> dict:
    section = recipe.get(name)
    if not isinstance(section, dict) or section.get("flavor") not in flavors:
        raise ValueError(f"{where}: {name}.flavor must be one of {sorted(flavors)}")
    return section


def load_recipe(name: str) -> dict:
    """The recipe `configs/stacks/<name>.yaml`, every component config and the step settings validated."""
    path = RECIPES / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"no stack recipe {name!r}; there are: {', '.join(sorted(p.stem for p in RECIPES.glob('*.yaml')))}")
    recipe = yaml.safe_load(path.read_text())
    where = str(path)
    if set(recipe) - SECTIONS:
        raise ValueError(f"{where}: unknown section(s) {sorted(set(recipe) - SECTIONS)}")
    operator = _section(recipe, "step_operator", where, STEP_OPERATORS)
    config_class, settings_class = (_class(p) for p in STEP_OPERATORS[operator["flavor"]])
    _check(f"{where} step_operator.config", config_class, operator.get("config", {}))
    _check(f"{where} step_settings", settings_class, recipe.get("step_settings", {}))
    store = _section(recipe, "artifact_store", where, ARTIFACT_STORES)
    _check(f"{where} artifact_store.config", _class(ARTIFACT_STORES[store["flavor"]]), store.get("config", {}))
    tracker = _section(recipe, "experiment_tracker", where, TRACKERS)
    _check(f"{where} experiment_tracker.config", _class(TRACKERS[tracker["flavor"]]), tracker.get("config", {}))
    return recipe


def components(name: str, recipe: dict, container_registry: str) -> list[tuple[str, str, str, dict]]:
    """(component type, name, flavor, config) of the recipe's stack, besides the local orchestrator: the step
    operator, the remote artifact store and MLflow server, the container registry and a local image builder (it
    builds docker/Dockerfile, which needs Docker where the run starts)."""
    operator, store, tracker = recipe["step_operator"], recipe["artifact_store"], recipe["experiment_tracker"]
    return [
        ("step_operator", f"{name}_gpu", operator["flavor"], operator.get("config", {})),
        ("artifact_store", f"{name}_store", store["flavor"], store["config"]),
        ("experiment_tracker", f"{name}_mlflow", tracker["flavor"], tracker["config"]),
        ("container_registry", f"{name}_registry", "default", {"uri": container_registry}),
        ("image_builder", f"{name}_builder", "local", {}),
    ]


def commands(name: str, recipe: dict, container_registry: str = "<your container registry URI>") -> list[str]:
    """The zenml commands that register the recipe's stack."""
    def options(config: dict) -> str:
        return " ".join(f"--{k}={json.dumps(v) if not isinstance(v, str) else v!r}" for k, v in config.items())

    connector = recipe.get("connector", {})
    operator, store = recipe["step_operator"]["flavor"], recipe["artifact_store"]["flavor"]
    lines = [f"zenml integration install {operator if operator != 'sagemaker' else 'aws'} {store} mlflow -y"]
    if connector:
        lines.append(f"zenml service-connector register {name}_connector --type {connector['type']} --auto-configure")
    parts = components(name, recipe, container_registry)
    lines += [f"zenml {kind.replace('_', '-')} register {component} --flavor={flavor} {options(config)}".rstrip()
              for kind, component, flavor, config in parts]
    if connector:
        lines += [f"zenml step-operator connect {name}_gpu --connector {name}_connector",
                  f"zenml artifact-store connect {name}_store --connector {name}_connector"]
    short = {"step_operator": "-s", "artifact_store": "-a", "experiment_tracker": "-e", "container_registry": "-c",
             "image_builder": "-i"}
    lines.append(f"zenml stack register {name}_stack -o default "
                 + " ".join(f"{short[kind]} {component}" for kind, component, _, _ in parts) + " --set")
    return lines


def register(name: str, recipe: dict, container_registry: str) -> str:
    """Register the recipe's components and stack in the active ZenML store, as `commands` would; returns the stack
    name. ZenML validates each config against its flavor and resolves the secret references (they must exist).
    Connecting a service connector is left to its commands: that needs your cloud login."""
    from zenml.client import Client
    from zenml.enums import StackComponentType

    client = Client()
    parts = components(name, recipe, container_registry)
    check_registrable(client, name, parts)
    for kind, component, flavor, config in parts:
        client.create_stack_component(component, flavor, StackComponentType(kind), config)
    stack = {StackComponentType(kind): component for kind, component, _, _ in parts}
    stack[StackComponentType.ORCHESTRATOR] = "default"
    return client.create_stack(f"{name}_stack", components=stack).name


def check_registrable(client, name: str, parts: list[tuple[str, str, str, dict]]) -> None:
    """Refuse before registering anything: a secret or key the configs reference that the store lacks (ZenML would
    fail half-way with the first components already registered), or a name already taken by an earlier run."""
    from zenml.enums import StackComponentType
    from zenml.utils import secret_utils

    for kind, component, _, config in parts:
        if client.list_stack_components(type=StackComponentType(kind), name=component).items:
            raise ValueError(f"a {kind} named {component!r} is already registered: delete it (`zenml "
                             f"{kind.replace('_', '-')} delete {component}`) or register the recipe once")
        for key, value in config.items():
            if not secret_utils.is_secret_reference(value):
                continue
            reference = secret_utils.parse_secret_reference(value)
            try:
                values = client.get_secret(reference.name).secret_values
            except KeyError:
                values = None
            if values is None or reference.key not in values:
                raise ValueError(f"{kind} {component}: {key} refers to the ZenML secret {value}, which this store "
                                 f"lacks; create it first: `zenml secret create {reference.name} "
                                 f"--{reference.key}=...`")
    if client.list_stacks(name=f"{name}_stack").items:
        raise ValueError(f"a stack named {name}_stack is already registered")


def run_config_overlay(name: str, recipe: dict) -> dict:
    """What to add to a run config so the GPU steps go to the recipe's step operator, in the project's image."""
    step = {"step_operator": f"{name}_gpu", "settings": {"step_operator": recipe.get("step_settings", {}),
                                                         "resources": {"gpu_count": 1}}}
    return {"settings": {"docker": {"dockerfile": "docker/Dockerfile", "build_context_root": "."}},
            "steps": {name: copy.deepcopy(step) for name in GPU_STEPS}}


def main(argv: list[str] | None = None) -> int:
    from llm_engineering.orchestration.process import prepare_process

    prepare_process()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", help="kubernetes, sagemaker, vertex, modal or ssh")
    parser.add_argument("--register", action="store_true",
                        help="register the stack in the active ZenML store (needs --container-registry)")
    parser.add_argument("--container-registry", help="where the step image is pushed, e.g. ghcr.io/you")
    parser.add_argument("--run-config", type=Path,
                        help="with --out: write this run config plus the recipe's overlay to --out")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    try:
        recipe = load_recipe(args.recipe)
        if args.register and not args.container_registry:
            raise ValueError("--register needs --container-registry (where the step image is pushed)")
        if bool(args.run_config) != bool(args.out):
            raise ValueError("--run-config and --out go together")
        if args.run_config and not args.run_config.is_file():
            raise ValueError(f"--run-config {args.run_config}: no such file")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    overlay = run_config_overlay(args.recipe, recipe)
    if args.register:
        try:
            stack = register(args.recipe, recipe, args.container_registry)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"registered stack {stack}; activate it with `zenml stack set {stack}`")
        if recipe.get("connector"):
            print("# connect it to your cloud account:\n" + "\n".join(
                line for line in commands(args.recipe, recipe) if "connector" in line))
    else:
        print("# register the stack:\n" + "\n".join(commands(args.recipe, recipe, args.container_registry
                                                              or "<your container registry URI>")))
    if args.out:
        args.out.write_text(yaml.safe_dump(with_overlay(yaml.safe_load(args.run_config.read_text()), overlay),
                                           sort_keys=False))
        print(f"wrote {args.out}: {args.run_config} with the GPU steps on {args.recipe}_gpu")
    else:
        print("\n# add to your run config:\n" + yaml.safe_dump(overlay, sort_keys=False))
    return 0


def with_overlay(run_config: dict, overlay: dict) -> dict:
    """`run_config` with the overlay's docker settings and per-step keys merged in (its other keys kept)."""
    merged = copy.deepcopy(run_config)
    merged.setdefault("settings", {}).update(overlay["settings"])
    for step, keys in copy.deepcopy(overlay["steps"]).items():
        target = merged.setdefault("steps", {}).setdefault(step, {})
        target.setdefault("settings", {}).update(keys.pop("settings", {}))  # the step's other settings stay
        target.update(keys)
    return merged


if __name__ == "__main__":
    sys.exit(main())
