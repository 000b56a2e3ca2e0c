"""What a run would do on a stack, without running it: compile the pipeline with a run config against a registered
stack (no image is built, nothing is submitted) and list, per step, where it runs, with which GPUs and settings, and
which image its step operator would build. For checking a cloud stack before it costs anything."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Optional


@contextlib.contextmanager
def active_stack(name: Optional[str]) -> Iterator[None]:
    """Make `name` the active stack for the duration, then restore the previous one."""
    from zenml.client import Client

    client = Client()
    previous = client.active_stack_model.id
    if name:
        client.activate_stack(name)
    try:
        yield
    finally:
        if name:
            client.activate_stack(previous)


def compile_plan(pipeline, config_path: Path, stack: Optional[str] = None) -> dict[str, Any]:
    """{"stack": name, "steps": {step: {runs_on, gpu_count, settings, image}}} for `pipeline` with `config_path`.

    ZenML 0.98 has no public compile-only call: `create_snapshot` also builds the images (Docker). This uses the
    pipeline's own compile (`_compile`), which `create_snapshot` calls before it builds."""
    from zenml.client import Client

    with active_stack(stack):
        configured = pipeline.with_options(config_path=str(config_path))
        configured._prepare_if_possible()
        snapshot, _, _ = configured._compile(config_path=str(config_path))
        current = Client().active_stack
        images = {build.step_name: build.settings for build in current.get_docker_builds(snapshot) if build.step_name}
        orchestrator = current.orchestrator.name
        plan = {}
        for name, step in snapshot.step_configurations.items():
            config = step.config
            image = images.get(name)
            plan[name] = {
                "runs_on": f"step_operator:{config.step_operator}" if config.step_operator
                else f"orchestrator:{orchestrator}",
                "gpu_count": config.resource_settings.gpu_count,
                "step_operator_settings": {key: value.model_dump(exclude_unset=True)
                                           for key, value in config.settings.items()
                                           if key.startswith("step_operator")},
                "image": {"dockerfile": image.dockerfile, "build_context_root": image.build_context_root}
                if image else None,
            }
        return {"stack": current.name, "steps": plan}
