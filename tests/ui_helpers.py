"""A real MLflow server (and `mlflow models serve`) on loopback and headless Chromium (Debian's chromium + chromium-driver, installed by
`make browser`), for tests that look at the UI the way a user does; ZenML's dashboard (`make dashboard`); and moto's
S3 server, a real S3 API for the object-store artifact store."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
MLFLOW = Path(sys.executable).parent / "mlflow"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def mlflow_server(backend_store_uri: str, log_path: Path):
    """`mlflow server` in its own process group; on exit the whole group (its uvicorn workers too) is stopped and
    checked gone."""
    with _serving(["server", "--backend-store-uri", backend_store_uri, "--workers", "1"], log_path) as base:
        yield base


@contextmanager
def mlflow_model_server(model_uri: str, tracking_uri: str, log_path: Path, timeout: float = 300):
    """`mlflow models serve` of a registry URI (e.g. models:/name@champion) in this environment, as a user runs it."""
    # MLflow starts `uvicorn` from PATH: `make test` runs the venv's python without activating the venv
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": f"{MLFLOW.parent}{os.pathsep}{os.environ['PATH']}"}
    with _serving(["models", "serve", "-m", model_uri, "--env-manager", "local", "--workers", "1"], log_path,
                  env=env, timeout=timeout) as base:
        yield base


@contextmanager
def _serving(mlflow_args: list[str], log_path: Path, env: dict | None = None, timeout: float = 120):
    port = free_port()
    with open(log_path, "w") as log:
        server = subprocess.Popen([str(MLFLOW), *mlflow_args, "--host", "127.0.0.1", "--port", str(port)],
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(server, base, log_path, timeout, f"mlflow {mlflow_args[0]}")
        yield base
    finally:
        stop_group(server)


def wait_healthy(server: subprocess.Popen, base: str, log_path: Path, timeout: float, what: str,
                 path: str = "/health") -> None:
    """Until `base` + `path` answers; fails with the server's log if it exits or the timeout passes first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{base}{path}", timeout=2)
            return
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)


def post_json(url: str, payload: dict, timeout: float = 300):
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def stop_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=20)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 20
    while group_alive(process.pid):  # workers outliving their parent would hold the port
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            raise AssertionError(f"processes of server group {process.pid} outlived SIGTERM")
        time.sleep(0.2)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


@contextmanager
def chromium():
    """Headless Chromium driven by chromedriver; quits (and its processes end) on exit."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        raise RuntimeError("Chromium and chromedriver are missing: run `make browser` (apt-get install chromium "
                           "chromium-driver), which `make test` does")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1200"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@contextmanager
def zenml_dashboard(cwd: Path, log_path: Path, timeout: float = 180):
    """`python -m llm_engineering.orchestration.dashboard` (what `make dashboard` runs) in `cwd`'s ZenML repository,
    in its own process group; yields (base URL, what it printed); on exit the whole group is stopped and checked
    gone."""
    port = free_port()
    with open(log_path, "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "llm_engineering.orchestration.dashboard", "--port", str(port)],
                                  cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(server, base, log_path, timeout, "the ZenML dashboard")
        yield base, log_path.read_text()
    finally:
        stop_group(server)


MOTO_SERVER = Path(sys.executable).parent / "moto_server"


@contextmanager
def s3_server(log_path: Path):
    """moto's S3 API server (`moto[server]`) on a free loopback port, in its own process group; yields its endpoint
    URL; on exit the whole group is stopped and checked gone."""
    port = free_port()
    with open(log_path, "w") as log:
        server = subprocess.Popen([str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)], stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(server, base, log_path, 60, "moto's S3 server", path="/moto-api/")
        yield base
    finally:
        stop_group(server)
