"""Create, list, update and delete scheduled runs of the fine-tuning pipeline, through ZenML's schedules.

    python -m llm_engineering.orchestration.schedules create configs/schedule.yaml [--system-cron]
    python -m llm_engineering.orchestration.schedules list
    python -m llm_engineering.orchestration.schedules update NAME --cron "0 4 * * *"
    python -m llm_engineering.orchestration.schedules delete NAME

The schedule file is validated first (cron fields, run config present). Schedules run on the orchestrator, so the
active stack's orchestrator must support them; the local one does not, and the command says which ones do. On a
single machine, `--system-cron` puts the schedule in this user's crontab instead (llm_engineering/schedules/system_cron.py):
`list`, `update` and `delete` find those entries by name too.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from zenml.client import Client

from llm_engineering.schedules import system_cron
from llm_engineering.schedules.schedule_file import check_cron, load_schedule_file

# ZenML orchestrator flavors that run cron schedules (https://docs.zenml.io/concepts/steps_and_pipelines/scheduling)
SCHEDULING_ORCHESTRATORS = ("kubernetes", "vertex", "sagemaker", "airflow", "kubeflow", "tekton", "azureml",
                            "databricks")


class ScheduleError(Exception):
    pass


def require_schedulable() -> None:
    stack = Client().active_stack
    if not stack.orchestrator.config.is_schedulable:
        raise ScheduleError(
            f"the active stack {stack.name!r} runs on the {stack.orchestrator.flavor!r} orchestrator, which cannot run "
            f"schedules. Orchestrators that can: {', '.join(SCHEDULING_ORCHESTRATORS)}. Register one and activate its "
            "stack (docs/cloud.md), then create the schedule again; or, to run it on this machine, add "
            "--system-cron (the system cron daemon).")


def create(schedule_file: Path, pipeline: str = "pipelines.finetune.finetune", system: bool = False) -> None:
    """Schedule `pipeline` (its source path, as `zenml pipeline run` takes it: the library does not import
    pipelines/) with the run config the schedule file names: on the orchestrator, or in the system cron."""
    spec, run_config = load_schedule_file(schedule_file)  # before anything is registered or compiled
    if system:
        root = Client().root or Path.cwd()  # the ZenML repository the runs belong to
        entry = system_cron.install(spec.schedule.name, spec.schedule.cron_expression, run_config, Path(root),
                                    pipeline, dict(os.environ))
        print(f"schedule {entry.name} created in the system crontab: {entry.cron}, {run_config}; "
              f"log {system_cron.log_path(Path(root), entry.name)}")
        return
    require_schedulable()
    from zenml.config.schedule import Schedule
    from zenml.utils import source_utils

    schedule = Schedule(name=spec.schedule.name, cron_expression=spec.schedule.cron_expression)
    source_utils.load(pipeline).with_options(config_path=str(run_config), schedule=schedule)()
    print(f"schedule {spec.schedule.name} created: {spec.schedule.cron_expression}, {run_config}")


def list_schedules() -> None:
    schedules = Client().list_schedules(size=100)
    in_cron = system_cron.entries() if shutil.which("crontab") else []
    if not schedules.items and not in_cron:
        print("no schedules")
    for item in schedules.items:
        print(f"{item.name}\t{item.cron_expression}\tactive={item.active}")
    for entry in in_cron:
        print(f"{entry.name}\t{entry.cron}\tsystem cron ({entry.script})")


def _in_system_cron(name: str) -> bool:
    return bool(shutil.which("crontab")) and any(entry.name == name for entry in system_cron.entries())


def update(name: str, cron: str) -> None:
    check_cron(cron)
    if _in_system_cron(name):
        system_cron.update(name, cron)
        print(f"schedule {name}: {cron} (system cron)")
        return
    require_schedulable()
    Client().update_schedule(name, cron_expression=cron)
    print(f"schedule {name}: {cron}")


def delete(name: str) -> None:
    if _in_system_cron(name):
        system_cron.delete(name)
        print(f"schedule {name} deleted from the system crontab")
        return
    Client().delete_schedule(name)
    print(f"schedule {name} deleted")


def main(argv: list[str] | None = None) -> int:
    from llm_engineering.orchestration.process import prepare_process

    prepare_process()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    creator = commands.add_parser("create")
    creator.add_argument("schedule_file", type=Path)
    creator.add_argument("--pipeline", default="pipelines.finetune.finetune", help="the pipeline's source path")
    creator.add_argument("--system-cron", action="store_true",
                         help="schedule it in this machine's crontab (one GPU box), not on the orchestrator")
    commands.add_parser("list")
    updater = commands.add_parser("update")
    updater.add_argument("name")
    updater.add_argument("--cron", required=True)
    commands.add_parser("delete").add_argument("name")
    args = parser.parse_args(argv)
    try:
        if args.command == "create":
            create(args.schedule_file, args.pipeline, args.system_cron)
        elif args.command == "list":
            list_schedules()
        elif args.command == "update":
            update(args.name, args.cron)
        else:
            delete(args.name)
    except (ScheduleError, system_cron.CronError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
