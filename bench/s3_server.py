"""moto's S3 API server on a free loopback port for the benchmarks (the tests have their own, in tests/ui_helpers)."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

KEY = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench", "region_name": "us-east-1"}


@contextmanager
def moto_s3(bucket: str):
    """Yields (endpoint URL, boto3 client) with `bucket` created; the server's process group is stopped on exit."""
    import boto3

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                              start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.5)
        s3 = boto3.client("s3", endpoint_url=endpoint, **KEY)
        s3.create_bucket(Bucket=bucket)
        yield endpoint, s3
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait()


def s3_stack_commands(repo: Path, bucket: str, endpoint: str) -> list[list[str]]:
    """What a user runs to put the repository's artifacts in the bucket."""
    return [[str(Path(sys.executable).with_name("zenml")), "secret", "create", "s3",
             f"--aws_access_key_id={KEY['aws_access_key_id']}", f"--aws_secret_access_key={KEY['aws_secret_access_key']}"],
            [sys.executable, "-m", "llm_engineering.orchestration.stack", "--root", str(repo), "--s3",
             f"s3://{bucket}/zenml", "--s3-endpoint-url", endpoint]]
