"""Schedule files: which run config to run, and when (cron). Validated before anything talks to an orchestrator."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

# (name, lowest, highest) of the five cron fields
CRON_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7))
CRON_ITEM = re.compile(r"^(\*|(\d+)(?:-(\d+))?)(?:/(\d+))?$")


def check_cron(expression: str) -> str:
    """The expression if it is a standard 5-field cron expression, else a ValueError naming the bad field."""
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"cron expression {expression!r} has {len(fields)} fields; it needs 5: "
                         "minute hour day-of-month month day-of-week, e.g. '0 3 * * *'")
    for value, (name, low, high) in zip(fields, CRON_FIELDS):
        for item in value.split(","):
            match = CRON_ITEM.match(item)
            numbers = [int(n) for n in match.groups()[1:3] if n is not None] if match else []
            step = match.group(4) if match else None
            if not match or any(not low <= n <= high for n in numbers) or (step is not None and int(step) == 0) \
                    or (len(numbers) == 2 and numbers[0] > numbers[1]):
                raise ValueError(f"cron expression {expression!r}: {name} field {value!r} is not valid "
                                 f"(values {low}-{high}, '*', ranges a-b, lists a,b, steps */n)")
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
