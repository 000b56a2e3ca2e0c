"""Schedules: the schedule file is validated before anything runs, and on the local orchestrator (no schedules) the
command refuses clearly, names the orchestrators that can, and creates nothing."""

import sys

import pytest
import yaml

from llm_engineering.schedules.schedule_file import check_cron, load_schedule_file
from tests.pipeline_helpers import PROJECT, run


def test_the_shipped_schedule_file_is_valid():
    spec, run_config = load_schedule_file(PROJECT / "configs" / "schedule.yaml")
    assert spec.schedule.cron_expression == "0 3 * * *" and run_config.name == "default.yaml"


@pytest.mark.parametrize("expression, problem", [
    ("0 3 * *", "has 4 fields"),
    ("61 3 * * *", "minute field '61'"),
    ("0 24 * * *", "hour field '24'"),
    ("0 3 0 * *", "day of month field '0'"),
    ("0 3 * 13 *", "month field '13'"),
    ("*/0 * * * *", "minute field '*/0'"),
    ("0 5-2 * * *", "hour field '5-2'"),
    ("0 3 * * 8", "day of week field '8'"),
    ("0 3 * * fun", "day of week field 'fun'"),
    ("0 3 L * *", "day of month field 'L'"),  # croniter's extensions no cron daemon or CronJob takes
    ("0 3 * * 1#2", "day of week field '1#2'"),
    ("0 0 30 2 *", "never fires"),
    ("0 3 * * * *", "has 6 fields"),
    ("@reboot", "not a known alias"),
])
def test_bad_cron_expressions_name_the_field(expression, problem):
    with pytest.raises(ValueError, match=problem.replace("*", r"\*")):
        check_cron(expression)


@pytest.mark.parametrize("expression", ["0 3 * * *", "*/15 8-18 * * 1-5", "0,30 0 1,15 * 0", "5 4 * * 7",
                                        "0 3 * * MON-FRI", "0 3 1 jan,jul *", "@daily", "@hourly"])
def test_good_cron_expressions_pass(expression):
    assert check_cron(expression) == expression


def test_schedule_file_errors_name_the_file_and_field(tmp_path):
    path = tmp_path / "nightly.yaml"
    schedule = {"name": "n", "cron_expression": "0 3 * * *"}
    path.write_text(yaml.safe_dump({"run_config": "missing.yaml", "schedule": schedule}))
    with pytest.raises(ValueError, match="run_config 'missing.yaml' does not exist"):
        load_schedule_file(path)
    path.write_text(yaml.safe_dump({"run_config": "x.yaml", "schedule": {"name": "n", "cron": "0 3 * * *"}}))
    with pytest.raises(ValueError, match=r"(?s)nightly.yaml.*schedule.cron_expression\n  Field required.*schedule.cron\n"):
        load_schedule_file(path)


def test_the_local_orchestrator_refuses_and_names_the_ones_with_schedules(shared_repo):
    shared_repo.activate()
    tmp_path = shared_repo.root
    command = [sys.executable, "-m", "llm_engineering.orchestration.schedules"]
    done = run(command + ["create", str(PROJECT / "configs" / "schedule.yaml")], tmp_path, 300)
    assert done.returncode == 2
    assert "'local' orchestrator, which cannot run schedules" in done.stderr
    assert "kubernetes, vertex, sagemaker, airflow" in done.stderr
    listed = run(command + ["list"], tmp_path, 300)
    assert listed.returncode == 0 and listed.stdout.strip() == "no schedules"
    bad = run(command + ["update", "nightly-finetune", "--cron", "0 3 * *"], tmp_path, 300)
    assert bad.returncode == 2 and "has 4 fields" in bad.stderr
