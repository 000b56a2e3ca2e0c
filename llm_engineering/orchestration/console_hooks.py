"""ZenML's side of the console: step hooks (`on_start`/`on_end`, set on the pipeline and so on every step) that print
each stage's start and end line, with its wall time and the figure from the metadata the step logged; a line for
each step ZenML took from its cache (no hook runs for those, so they are reported from the run's record when the
next step starts); and, after the export step, the closing summary.

Hooks run in the process that runs the step (the pipeline's own process on the local orchestrator, the step
operator's process otherwise), inside ZenML's step context.

A failed run ends with our block (each failed step and its reason, how to rerun, where the traceback is) instead of
the orchestrator's traceback and ZenML's boxed one of its own call stack, in which the reason was hard to find:
`short_failures()`, called by the pipeline modules, which the CLI process imports. A run refused while ZenML
compiles it (a typo'd key, a missing file: one of our own exceptions) ends with that message alone, not ZenML's
150-line boxed traceback above it. LLM_ENGINEERING_TRACEBACK=1 keeps ZenML's output as it was.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Optional

from zenml import get_step_context
from zenml.client import Client
from zenml.enums import ExecutionStatus

from llm_engineering import console

_started: dict[str, float] = {}  # step run id -> perf_counter at its start hook
_reported_cached: set[str] = set()  # step run ids already reported as cached in this process
_failed: dict[str, list[tuple[str, str]]] = {}  # run name -> (step, reason) of the steps that failed in this process


def on_stage_start() -> None:  # (the noise filters are on: importing this package installed them)
    context = get_step_context()
    _report_cached_steps(context.pipeline_run.id)
    _started[str(context.step_run.id)] = time.perf_counter()
    console.stage_started(context.step_name, *_position(context))


def on_stage_end(exception: Optional[BaseException] = None) -> None:
    context = get_step_context()
    start = _started.pop(str(context.step_run.id), None)
    seconds = time.perf_counter() - start if start is not None else None
    step_run = Client().get_run_step(context.step_run.id)
    metadata = dict(step_run.run_metadata)
    console.stage_ended(context.step_name, seconds, metadata, exception, *_position(context))
    if exception is not None:
        reason = f"{type(exception).__name__}: {str(exception).strip()}"
        _failed.setdefault(context.pipeline_run.name, []).append((context.step_name, reason))
    if context.step_name == "export_model" and exception is None:
        _report_cached_steps(context.pipeline_run.id)
        console.say(console.summary_block(metadata, context.pipeline_run.name, _mlflow_url(metadata)))


def _report_cached_steps(run_id) -> None:
    run = Client().get_pipeline_run(run_id)
    names = _step_order(run.snapshot)
    for name, step in run.steps.items():
        if step.status == ExecutionStatus.CACHED and str(step.id) not in _reported_cached:
            _reported_cached.add(str(step.id))
            index = names.index(name) + 1 if name in names else None
            console.stage_cached(name, index, len(names) or None)


def _position(context) -> tuple[Optional[int], Optional[int]]:
    """Where this step stands in the pipeline's step order (the order the local orchestrator runs them in)."""
    names = _step_order(context.pipeline_run.snapshot)
    if context.step_name not in names:
        return None, None
    return names.index(context.step_name) + 1, len(names)


def _step_order(snapshot) -> list[str]:
    return list(snapshot.step_configurations) if snapshot else []


def _mlflow_url(metadata: dict) -> Optional[str]:
    """The run's page in `make ui` (the local tracking store's UI on 127.0.0.1:5000)."""
    run_id, experiment_id = metadata.get("mlflow_run_id"), metadata.get("mlflow_experiment_id")
    if not run_id or not experiment_id:
        return None
    return f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{run_id}"


class _NoTraceback(logging.Filter):
    """The local orchestrator's "Step X failed." line without the traceback it attaches (the reason is printed)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("Step ") and record.exc_info:
            record.exc_info, record.exc_text = None, None
        return True


def short_failures() -> None:
    """In the process that runs the pipeline: a failed run ends with our failure block, not two tracebacks of
    ZenML's own call stack. Idempotent; nothing changes with LLM_ENGINEERING_TRACEBACK=1."""
    if os.environ.get("LLM_ENGINEERING_TRACEBACK") == "1":
        return
    orchestrator = logging.getLogger("zenml.orchestrators.local.local_orchestrator")
    if not any(isinstance(f, _NoTraceback) for f in orchestrator.filters):
        orchestrator.addFilter(_NoTraceback())
    if getattr(sys.excepthook, "short_failures", False):
        return
    previous = sys.excepthook

    def hook(kind, error, trace):
        if not (kind is RuntimeError and str(error).startswith("Pipeline run has failed")):
            ours = _our_error(error)
            if ours is not None:  # e.g. refused while compiling: our message names the mistake and where it is
                return console.say(console.refusal_block(f"{type(ours).__name__}: {ours}"))
            return previous(kind, error, trace)
        if _failed:
            for run_name, failures in _failed.items():
                console.say(console.failure_block(run_name, failures))
        else:  # the steps ran in other processes (a step operator): their reasons are in their logs above
            console.say(f"{error} (each step's reason is above; make dashboard shows its logs)")

    hook.short_failures = True
    sys.excepthook = hook


def _our_error(error: BaseException) -> Optional[BaseException]:
    """The project's own exception (a class defined in llm_engineering: ConfigError, DataError, ...) that ended the
    process, directly or as the cause of another's: its message names what is wrong and where."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if type(error).__module__.split(".")[0] == "llm_engineering":
            return error
        error = error.__cause__ or error.__context__
    return None

