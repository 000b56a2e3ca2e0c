"""Scheduled runs on one machine (a GPU box reached over SSH, a workstation): entries in the user's crontab, for the
system cron daemon (Debian's `cron`), where the ZenML orchestrator cannot schedule.

Each schedule is one crontab line tagged `# llm_engineering schedule NAME` that runs `.schedules/NAME.sh` in the
project. The script carries the project's environment (the venv's PATH, the ZENML_/HF_/MLFLOW_ settings and
OMP_NUM_THREADS of the shell that created it, never a variable that looks like a credential: those come from ZenML
secrets), appends to `logs/schedules/NAME.log`, and runs `zenml pipeline run` under `flock -n`, so a firing while the previous run still
goes is skipped (and logged) instead of starting a second run on the same GPU.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from llm_engineering.schedules.schedule_file import check_cron

MARKER = "# llm_engineering schedule "
SKIPPED_EXIT = 75  # flock's exit code when the lock is held (EX_TEMPFAIL)
KEPT_VARIABLES = re.compile(
    r"^(ZENML_|HF_|MLFLOW_|LLM_ENGINEERING_|TOKENIZERS_PARALLELISM$|VIRTUAL_ENV$|OMP_NUM_THREADS$)")
CREDENTIAL = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL|AUTH", re.IGNORECASE)


class CronError(Exception):
    pass


@dataclass(frozen=True)
class CronEntry:
    name: str
    cron: str
    script: Path


def script_path(root: Path, name: str) -> Path:
    return root.resolve() / ".schedules" / f"{name}.sh"


def log_path(root: Path, name: str) -> Path:
    return root.resolve() / "logs" / "schedules" / f"{name}.log"


def run_script(root: Path, name: str, run_config: Path, pipeline: str, environ: dict[str, str]) -> str:
    """The shell script one firing runs."""
    root = root.resolve()
    zenml = Path(sys.executable).with_name("zenml")
    kept = {k: v for k, v in sorted(environ.items()) if KEPT_VARIABLES.match(k) and not CREDENTIAL.search(k)}
    kept["PATH"] = f"{zenml.parent}:/usr/local/bin:/usr/bin:/bin"
    log, lock = log_path(root, name), script_path(root, name).with_suffix(".lock")
    now = "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    command = shlex.join([str(zenml), "pipeline", "run", pipeline, "--config", str(run_config.resolve())])
    return "\n".join([
        "#!/bin/sh",
        f"# schedule {name}, written by llm_engineering; "
        f"`python -m llm_engineering.orchestration.schedules delete {name}` removes it",
        *(f"export {k}={shlex.quote(v)}" for k, v in kept.items()),
        f"cd {shlex.quote(str(root))} || exit 1",
        f"LOG={shlex.quote(str(log))}",
        f'echo "{now} {name}: firing" >> "$LOG"',
        f'flock -n -E {SKIPPED_EXIT} {shlex.quote(str(lock))} {command} >> "$LOG" 2>&1',
        "rc=$?",
        f'if [ "$rc" -eq {SKIPPED_EXIT} ]; then echo "{now} {name}: skipped, the previous run still holds the lock" '
        f'>> "$LOG"; else echo "{now} {name}: run ended (exit $rc)" >> "$LOG"; fi',
        "",
    ])


def _crontab() -> str:
    if shutil.which("crontab") is None:
        raise CronError("no `crontab` here: install the system cron (Debian: `apt-get install cron`, or `make cron`) "
                        "and start its daemon")
    listed = subprocess.run(["crontab", "-l"], capture_output=True, text=True)
    if listed.returncode != 0 and "no crontab" not in listed.stderr:
        raise CronError(f"crontab -l failed: {listed.stderr.strip()}")
    return listed.stdout if listed.returncode == 0 else ""


def _write_crontab(text: str) -> None:
    written = subprocess.run(["crontab", "-"], input=text, capture_output=True, text=True)
    if written.returncode != 0:
        raise CronError(f"crontab - refused the table: {written.stderr.strip()}")


def entries() -> list[CronEntry]:
    found = []
    for line in _crontab().splitlines():
        if MARKER in line and not line.lstrip().startswith("#"):
            command, name = line.split(MARKER, 1)
            words = shlex.split(command)
            cron = words[0] if words[0].startswith("@") else " ".join(words[:5])
            found.append(CronEntry(name.strip(), cron, Path(words[-1])))
    return found


def install(name: str, cron: str, run_config: Path, root: Path, pipeline: str, environ: dict[str, str]) -> CronEntry:
    """Write the run script and add (or replace) the crontab line of schedule `name`."""
    check_cron(cron)
    if not run_config.is_file():
        raise CronError(f"run config {run_config} does not exist")
    script = script_path(root, name)
    if "%" in str(script) + str(run_config.resolve()):  # cron turns % into a newline
        raise CronError(f"a path with '%' cannot go in a crontab: {script}, {run_config.resolve()}")
    script.parent.mkdir(parents=True, exist_ok=True)
    log_path(root, name).parent.mkdir(parents=True, exist_ok=True)
    script.write_text(run_script(root, name, run_config, pipeline, environ))
    script.chmod(0o700)  # it holds the project's settings
    _set_line(name, f"{cron} /bin/sh {shlex.quote(str(script))} {MARKER}{name}")
    return CronEntry(name, cron, script)


def update(name: str, cron: str) -> CronEntry:
    check_cron(cron)
    entry = _entry(name)
    _set_line(name, f"{cron} /bin/sh {shlex.quote(str(entry.script))} {MARKER}{name}")
    return CronEntry(name, cron, entry.script)


def delete(name: str) -> None:
    entry = _entry(name)
    _set_line(name, None)
    entry.script.unlink(missing_ok=True)


def _entry(name: str) -> CronEntry:
    for entry in entries():
        if entry.name == name:
            return entry
    raise CronError(f"no system cron schedule named {name!r}")


def _set_line(name: str, line: str | None) -> None:
    kept = [l for l in _crontab().splitlines() if not l.rstrip().endswith(f"{MARKER}{name}")]
    _write_crontab("\n".join(kept + ([line] if line else [])) + "\n")
