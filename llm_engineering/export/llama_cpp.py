"""llama.cpp's own tools, as this project installs them: the converter and the quantizer of one llama-cpp-python
version (pyproject's `gguf` extra, built from its source distribution by `make install`).

- `convert_hf_to_gguf.py`, its `conversion/` package and its own `gguf-py` ship inside that source distribution
  (`vendor/llama.cpp/`); `python -m llm_engineering.export.llama_cpp` copies them from it into
  `<venv>/share/llama.cpp`. The converter runs in its own process, with its own `gguf-py` first on the path.
- The quantizer (`llama_model_quantize`) and the runtime that checks each file are the library built from it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path

PACKAGE = "llama-cpp-python"
INSTALL = "make install (or: pip install -e '.[gguf]' && python -m llm_engineering.export.llama_cpp)"
# llama.cpp's file types (include/llama.h, llama_ftype); f16 is the converter's output and the quantizer's input
FILE_TYPES = {"f16": 1, "q8_0": 7, "q4_k_m": 15, "q5_k_m": 17, "q6_k": 18}


class LlamaCppError(RuntimeError):
    """llama.cpp's tools are missing, or one of them failed on this model."""


def tools_dir() -> Path:
    return Path(os.environ.get("LLAMA_CPP_TOOLS", Path(sys.prefix) / "share" / "llama.cpp"))


def converter() -> Path:
    return tools_dir() / "convert_hf_to_gguf.py"


def missing_tools() -> str | None:
    """Why GGUF files cannot be made here (None: they can)."""
    try:
        version = metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return f"export.gguf needs llama.cpp's converter and quantizer ({PACKAGE} is not installed): {INSTALL}"
    stamp = tools_dir() / "VERSION"
    if not converter().is_file() or not stamp.is_file():
        return f"export.gguf needs llama.cpp's converter, not found in {tools_dir()}: {INSTALL}"
    if stamp.read_text().strip() != version:
        return (f"llama.cpp's converter in {tools_dir()} is from {PACKAGE} {stamp.read_text().strip()}, its "
                f"quantizer from {version}: {INSTALL}")
    return None


def _failure(done: subprocess.CompletedProcess) -> str:
    lines = [line for line in (done.stderr or done.stdout or "").splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error" in line or "not supported" in line]
    return (errors or lines or [f"exit status {done.returncode}"])[-1].strip()


def convert(model_dir: Path, outfile: Path, *, vocab_only: bool = False, timeout: float = 3600) -> Path:
    """model_dir (a transformers checkpoint) -> an f16 GGUF at `outfile`, by llama.cpp's converter in its own process."""
    if problem := missing_tools():
        raise LlamaCppError(problem)
    command = [sys.executable, str(converter()), str(model_dir), "--outfile", str(outfile), "--outtype", "f16"]
    if name := _gguf_name(model_dir):
        command += ["--model-name", name]
    # its own gguf-py, not the `gguf` package installed beside it (the converter puts it first unless NO_LOCAL_GGUF)
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"} | {"HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command + (["--vocab-only"] if vocab_only else []), capture_output=True, text=True,
                          env=env, timeout=timeout)
    if done.returncode or not outfile.is_file():
        outfile.unlink(missing_ok=True)
        raise LlamaCppError(f"llama.cpp's converter failed on {model_dir.name}: {_failure(done)}")
    return outfile


# llama.cpp gives a family's special tokens their whitespace handling by the GGUF's general.name (llama-vocab.cpp:
# Phi-3's turn markers strip the newline after them only in a model whose name says phi3), and the converter names
# the file after its directory: a fine-tune exported as `booking` would tokenize its prompts otherwise than transformers.
NAME_MARKS = {"Phi3ForCausalLM": "phi3"}


def _gguf_name(model_dir: Path) -> str | None:
    """The name to give the GGUF where the directory's would change how llama.cpp tokenizes (None: the default)."""
    config = model_dir / "config.json"
    architectures = (json.loads(config.read_text()).get("architectures") or []) if config.is_file() else []
    mark = next((NAME_MARKS[a] for a in architectures if a in NAME_MARKS), None)
    if mark is None or mark in model_dir.name.lower().replace("-", ""):
        return None
    return f"{model_dir.name}-{mark}"


def conversion_problem(model_dir: Path) -> str | None:
    """Whether llama.cpp's converter knows this checkpoint's architecture and tokenizer: its vocabulary-only
    conversion, seconds, before any weights are read (None: it does)."""
    with tempfile.TemporaryDirectory(prefix="gguf-vocab-") as scratch:
        try:
            convert(model_dir, Path(scratch) / "vocab.gguf", vocab_only=True, timeout=600)
        except LlamaCppError as exc:
            return str(exc)
    return None


def quantize(f16_file: Path, outfile: Path, gguf_type: str) -> Path:
    """llama.cpp's quantizer (llama_model_quantize), f16 GGUF -> `gguf_type`."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FILE_TYPES[gguf_type]
    params.nthread = os.cpu_count() or 1
    status = llama_cpp.llama_model_quantize(str(f16_file).encode(), str(outfile).encode(), params)
    if status != 0 or not outfile.is_file():
        outfile.unlink(missing_ok=True)
        raise LlamaCppError(f"llama.cpp's quantizer could not make {gguf_type} of {f16_file.name} (status {status})")
    return outfile


def install_tools(destination: Path | None = None) -> Path:
    """Copy the converter, its `conversion/` package and its `gguf-py` out of the source distribution of the installed
    llama-cpp-python (the same version: pip fetches it from the package index, or reuses its cache)."""
    version = metadata.version(PACKAGE)
    destination = destination or tools_dir()
    with tempfile.TemporaryDirectory(prefix="llama-cpp-sdist-") as scratch:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        f"{PACKAGE}=={version}", "-d", scratch], check=True)
        [archive] = Path(scratch).glob("*.tar.gz")
        with tarfile.open(archive) as sdist:
            prefix = f"{archive.name[:-len('.tar.gz')]}/vendor/llama.cpp/"
            wanted = [m for m in sdist.getmembers() if m.name.startswith(prefix) and (
                m.name == prefix + "convert_hf_to_gguf.py" or m.name.startswith(
                tuple(prefix + part for part in ("conversion/", "gguf-py/gguf/", "models/templates/"))))]
            sdist.extractall(scratch, members=wanted, filter="data")
        staged = Path(scratch) / prefix
        shutil.rmtree(destination, ignore_errors=True)
        destination.mkdir(parents=True)
        shutil.copy2(staged / "convert_hf_to_gguf.py", destination)
        shutil.copytree(staged / "conversion", destination / "conversion")
        shutil.copytree(staged / "gguf-py", destination / "gguf-py")
        shutil.copytree(staged / "models", destination / "models")  # chat templates the converter reads for some
    (destination / "VERSION").write_text(version + "\n")
    return destination


if __name__ == "__main__":
    print(f"llama.cpp's converter installed in {install_tools()}")
