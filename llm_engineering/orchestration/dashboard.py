"""ZenML's own dashboard over this project's pipeline runs, on loopback (`make dashboard`).

    python -m llm_engineering.orchestration.dashboard [--port 8237] [--host 127.0.0.1]

It runs `zenml login --local --blocking`: ZenML's local server over the same SQL store the runs are written to. In
blocking mode the client is not repointed at the server, so `make run` works the same whether the dashboard is up or
not, and Ctrl-C stops it with nothing to undo. The local server has no login (ZenML's NO_AUTH): keep it on loopback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from zenml.client import Client
from zenml.enums import StoreType

DEFAULT_PORT = 8237  # ZenML's own default for the local server
PIPELINE = "finetune"


def run_page(base_url: str, run_id) -> str:
    return f"{base_url}/projects/default/runs/{run_id}"


def skip_onboarding_survey(client: Client) -> None:
    """The dashboard sends a user who has not answered ZenML's onboarding survey there before any page (its check:
    email opt-in unset, or no `finished_onboarding_survey` in the user's metadata); a local single-user dashboard
    has nobody to survey."""
    user = client.active_user
    metadata = dict(user.user_metadata or {})
    if user.email_opted_in is None or not metadata.get("finished_onboarding_survey"):
        client.update_user(user.id, updated_email_opt_in=False,
                           updated_metadata={**metadata, "finished_onboarding_survey": True})


def server_command(host: str, port: int) -> list[str]:
    zenml = str(Path(sys.executable).with_name("zenml"))
    return [zenml, "login", "--local", "--blocking", "--ip-address", host, "--port", str(port)]


def latest_run_id(client: Client):
    try:
        run = client.get_pipeline(PIPELINE).last_run
    except (KeyError, RuntimeError):  # no pipeline or no run yet
        return None
    return run.id


def main(argv: list[str] | None = None) -> None:
    from llm_engineering.orchestration.process import prepare_process

    prepare_process()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = parser.parse_args(argv)
    client = Client()
    if client.zen_store.type != StoreType.SQL:  # already on a ZenML server: it has its own dashboard
        print(f"This client is connected to the ZenML server at {client.zen_store.url}: its dashboard is there.")
        return
    skip_onboarding_survey(client)
    base = f"http://{args.host}:{args.port}"
    run_id = latest_run_id(client)
    print(f"ZenML dashboard: {base}  (Ctrl-C stops it)")
    if run_id:
        print(f"latest {PIPELINE} run: {run_page(base, run_id)}")
    sys.stdout.flush()
    command = server_command(args.host, args.port)
    os.execv(command[0], command)  # the server is this process: Ctrl-C and SIGTERM reach it directly


if __name__ == "__main__":
    main()
