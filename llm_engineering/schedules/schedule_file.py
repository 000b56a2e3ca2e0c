"""Schedule files: which run config to run, and when (cron). Validated before anything talks to an orchestrator."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

CRON_FIELDS = (("minute", "0-59"), ("hour", "0-23"), ("day of month", "1-31"), ("month", "1-12 or jan-dec"),
               ("day of week", "0-7 or sun-sat"))
# what Debian's cron, Kubernetes CronJobs, Vertex and Airflow all accept; croniter alone also takes seconds, L, #, ?, H
CRON_ITEM = re.compile(r"^(\*|(\d+|[A-Za-z]{3})(?:-(\d+|[A-Za-z]{3}))?)(?:/(\d+))?$")  # names: jan, mon
CRON_ALIASES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
CRON_HELP = ("minute hour day-of-month month day-of-week, e.g. '0 3 * * *' or '0 3 * * MON-FRI', or one of "
             + ", ".join(CRON_ALIASES))


def check_cron(expression: str) -> str:
    """The expression if every cron scheduler this project targets runs it (five fields with numbers, names, ranges,
    lists and steps, or an @alias) and it fires at all; else a ValueError naming the bad field."""
    from croniter import CroniterBadDateError, CroniterError, croniter

    fields = expression.split()
    if expression.startswith("@"):
        if expression.strip().lower() not in CRON_ALIASES:
            raise ValueError(f"cron expression {expression!r} is not a known alias; use {CRON_HELP}")
        return expression
    if len(fields) != 5:
        raise ValueError(f"cron expression {expression!r} has {len(fields)} fields; it needs 5: {CRON_HELP}")
    for index, (value, (name, values)) in enumerate(zip(fields, CRON_FIELDS)):
        alone = " ".join(value if i == index else "*" for i in range(5))  # this field checked on its own
        try:
            items = [CRON_ITEM.match(item) for item in value.split(",")]
            if not all(items):
                raise ValueError("unsupported syntax")
            croniter(alone)
        except (CroniterError, ValueError):
            raise ValueError(f"cron expression {expression!r}: {name} field {value!r} is not valid (values "
                             f"{values}, '*', ranges a-b, lists a,b, steps */n)") from None
        for item in items:  # croniter wraps a reversed range around; cron and Kubernetes refuse it
            low, high = item.group(2), item.group(3)
            if high is not None and low.isdigit() and high.isdigit() and int(low) > int(high):
                raise ValueError(f"cron expression {expression!r}: {name} field {value!r} is not valid (the range "
                                 f"{low}-{high} runs backwards)")
    try:
        croniter(expression).get_next()
    except CroniterBadDateError:
        raise ValueError(f"cron expression {expression!r} never fires (no such date)") from None
    return expression


class ScheduleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    cron_expression: str

    @field_validator("cron_expression")
    @classmethod
    def _cron(cls, value: str) -> str:
        return check_cron(value)


class ScheduleFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_config: str = Field(description="the pipeline's run config (YAML), relative to the schedule file's folder "
                                        "or the working directory")
    schedule: ScheduleSpec

    def run_config_path(self, schedule_file: Path) -> Path:
        for candidate in (Path(self.run_config), schedule_file.parent / self.run_config):
            if candidate.is_file():
                return candidate
        raise ValueError(f"{schedule_file}: run_config {self.run_config!r} does not exist")


def load_schedule_file(path: Path) -> tuple[ScheduleFile, Path]:
    """The validated schedule file and its run config's path; errors name the file and the field."""
    if not path.is_file():
        raise ValueError(f"schedule file {path} does not exist")
    try:
        spec = ScheduleFile.model_validate(yaml.safe_load(path.read_text()) or {})
    except Exception as exc:  # pydantic's message lists each bad field
        raise ValueError(f"{path}: {exc}") from None
    return spec, spec.run_config_path(path)


def describe(spec: Optional[ScheduleSpec]) -> str:
    return f"{spec.name} ({spec.cron_expression})" if spec else "-"
