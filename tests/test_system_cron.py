"""A schedule in the system cron, fired by the real daemon (Debian's `cron`, installed by `make cron`): created from a
schedule file with `--system-cron`, it starts a ZenML run at the next minute; a second firing of the crontab line
while that run still trains is skipped by the lock; `delete` removes the crontab line and its script. The run gets its
own ZenML store (the run this test stops half-way is nobody else's last run)."""

import json
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

from llm_engineering.schedules.system_cron import MARKER, log_path, script_path
from tests.pipeline_helpers import run, tiny_parameters, write_config
from tests.ui_helpers import stop_group

CRON = Path("/usr/sbin/cron")
SCHEDULES = [sys.executable, "-m", "llm_engineering.orchestration.schedules"]
RUNS = ("from zenml.client import Client; import json; "
        "print(json.dumps([str(r.status) for r in Client().list_pipeline_runs(size=20).items]))")


@contextmanager
def cron_daemon():
    """The system cron daemon: the one already running, or one started here (and stopped on exit)."""
    if subprocess.run(["pgrep", "-x", "cron"], capture_output=True).returncode == 0:
        yield
        return
    if not CRON.exists():
        raise RuntimeError("Debian's cron is missing: run `make cron` (apt-get install cron), which `make test` does")
    daemon = subprocess.Popen([str(CRON), "-f"], start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        stop_group(daemon)


def wait_for(predicate, timeout: float, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None


def test_a_system_cron_schedule_fires_skips_the_overlapping_firing_and_is_deleted(fresh_repo, tmp_path,
                                                                                   tiny_model_dir):
    root, _, env = fresh_repo
    parameters = tiny_parameters(tiny_model_dir)
    parameters["train"].update(max_steps=100_000, eval_steps=100_000)  # still training a minute later
    config = write_config(root / "long.yaml", parameters)
    name = f"cron-test-{tmp_path.name}"
    schedule = root / "every-minute.yaml"
    schedule.write_text(yaml.safe_dump({"run_config": "long.yaml",
                                        "schedule": {"name": name, "cron_expression": "* * * * *"}}))
    log = log_path(root, name)
    with cron_daemon():
        try:
            created = run(SCHEDULES + ["create", str(schedule), "--system-cron"], root, 300, env)
            assert created.returncode == 0, created.stderr[-3000:]
            assert f"schedule {name} created in the system crontab: * * * * *" in created.stdout
            listed = run(SCHEDULES + ["list"], root, 300, env)
            assert f"{name}\t* * * * *\tsystem cron" in listed.stdout, listed.stdout + listed.stderr
            crontab = subprocess.run(["crontab", "-l"], capture_output=True, text=True).stdout
            assert f"* * * * * /bin/sh {script_path(root, name)} {MARKER}{name}" in crontab

            def runs() -> list[str]:
                listed = run([sys.executable, "-c", RUNS], root, 120, env)
                return json.loads(listed.stdout.strip().splitlines()[-1]) if listed.returncode == 0 else []

            # fires at the next minute; the run is in the ZenML store soon after
            assert wait_for(lambda: log.is_file() and "firing" in log.read_text(), 75), "cron never fired"
            # (one run, past ZenML's "initializing" when its first step has started)
            assert wait_for(lambda: runs() == ["running"], 90, interval=3), (runs(), log.read_text()[-3000:])
            # the long run only has to hold the lock: it trains at the lowest priority, not on the other tests' cores
            for pid in subprocess.run(["pgrep", "-f", str(config)], capture_output=True, text=True).stdout.split():
                subprocess.run(["renice", "-n", "19", "-p", pid], capture_output=True)
            # a firing while that run still trains finds the lock held: skipped, no second run. It is the crontab
            # line's own command, run now rather than at the next minute (a minute of waiting, and of the long
            # run's training taking a core from the other tests)
            [line] = [line for line in crontab.splitlines() if line.endswith(MARKER + name)]
            again = subprocess.run(["/bin/sh", "-c", line.split(None, 5)[5]], capture_output=True, text=True,
                                   timeout=120)
            assert again.returncode == 0, again.stderr
            assert "skipped, the previous run still holds the lock" in log.read_text(), log.read_text()[-3000:]
            assert runs() == ["running"]
        finally:
            deleted = run(SCHEDULES + ["delete", name], root, 300, env)
            subprocess.run(["pkill", "-KILL", "-f", str(config)])  # the long run (flock and zenml) ends here
        assert deleted.returncode == 0 and f"schedule {name} deleted from the system crontab" in deleted.stdout, \
            deleted.stdout + deleted.stderr
    assert MARKER + name not in subprocess.run(["crontab", "-l"], capture_output=True, text=True).stdout
    assert not script_path(root, name).exists()
    assert wait_for(lambda: subprocess.run(["pgrep", "-f", str(config)], capture_output=True).returncode != 0, 30)


def test_the_script_keeps_the_settings_but_no_credential(tmp_path):
    from llm_engineering.schedules.system_cron import run_script

    script = run_script(tmp_path, "nightly", tmp_path / "run.yaml", "pipelines.finetune.finetune",
                        {"ZENML_CONFIG_PATH": "/cfg", "HF_HOME": "/hf", "MLFLOW_TRACKING_PASSWORD": "hunter2",
                         "OMP_NUM_THREADS": "1",
                         "COMET_API_KEY": "k-123", "HOME": "/root", "ZENML_STORE_API_KEY": "zk"})
    assert "export ZENML_CONFIG_PATH=/cfg" in script and "export HF_HOME=/hf" in script
    assert "export OMP_NUM_THREADS=1" in script  # a shell that limits torch's threads limits the scheduled run's
    for secret in ("hunter2", "k-123", "zk"):
        assert secret not in script
    assert f"flock -n -E 75 {tmp_path.resolve()}/.schedules/nightly.lock" in script
