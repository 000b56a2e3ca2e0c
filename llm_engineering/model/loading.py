"""Resolve a model source to a checkpoint and load it, optionally quantized with bitsandbytes.

Steps pass a `BaseModelRef` (a few hundred bytes) instead of the weights: each step that needs the model loads it from
the local checkpoint or the Hugging Face cache, so the base weights never travel through the artifact store.
Only safetensors weights are loaded, and remote code only runs when the config asks for it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Union

import torch
from pydantic import BaseModel

from llm_engineering.config import ModelConfig, TokenizerConfig
from llm_engineering.data.templates import TemplateError, apply_template
from llm_engineering.model.embedded import EMBEDDED_MODEL_NAME, embedded_model_dir
from llm_engineering.model.precision import DTYPES, torch_dtype  # noqa: F401  (DTYPES: re-exported)

logger = logging.getLogger(__name__)



class ModelLoadError(ValueError):
    """The model source cannot be loaded; the message names the source and what is missing."""


class BaseModelRef(BaseModel):
    """What the load step hands on: how to load the base model again, and what it measured."""

    config: ModelConfig
    display_name: str
    revision: Optional[str] = None
    weights_sha256: Optional[str] = None
    num_parameters: int
    footprint_bytes: int
    unquantized_bytes: int
    load_seconds: float


def checkpoint_location(cfg: ModelConfig) -> str:
    """Local directory or hub id to pass to `from_pretrained`."""
    if cfg.source == "embedded":
        return str(embedded_model_dir())
    if cfg.source == "gguf":
        from llm_engineering.model.gguf_source import GGUFSourceError, gguf_checkpoint_dir

        try:
            return str(gguf_checkpoint_dir(cfg.name_or_path))
        except GGUFSourceError as exc:
            raise ModelLoadError(str(exc)) from None
    if cfg.source == "local":
        path = Path(cfg.name_or_path).expanduser()
        if not path.is_dir():
            raise ModelLoadError(f"model.name_or_path: local checkpoint directory not found: {path}")
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"model.name_or_path: {path} has no config.json (not a Hugging Face checkpoint)")
        if not any(path.glob("*.safetensors")) and not cfg.allow_pickle_weights:
            raise ModelLoadError(
                f"model.name_or_path: {path} has no *.safetensors weights "
                "(pickled .bin checkpoints are refused; convert them to safetensors, or set "
                "model.allow_pickle_weights: true if you trust the file)"
            )
        return str(path.resolve())
    return cfg.name_or_path


def hub_commit(repo_id: str, revision: Optional[str] = None, cache_dir: Optional[str] = None) -> Optional[str]:
    """The commit a hub checkpoint was read from: the snapshot of the local hub cache that `revision` (a branch, tag or
    commit; None: main) resolves to, as `from_pretrained` resolved it. None where the cache has no such snapshot.
    (transformers 5 no longer records it on the config as `_commit_hash`.)"""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        snapshot = snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True,
                                     allow_patterns=["config.json"])
    except LocalEntryNotFoundError:
        logger.warning("%s: no snapshot of revision %s in the hub cache; later steps load it unpinned",
                       repo_id, revision or "main")
        return None
    return Path(snapshot).name


def checkpoint_stamp(cfg: ModelConfig) -> str:
    """Names, sizes and mtimes of a local checkpoint's files or a GGUF file ("" for the embedded model and hub ids,
    which the package version and the revision pin): cheap enough to compute when a pipeline compiles, and changed by any rewrite of the weights."""
    if cfg.source not in ("local", "gguf"):
        return ""
    path = Path(cfg.name_or_path).expanduser()
    if not path.exists():
        return ""  # the load step names the missing directory or file
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    stamp = "".join(f"{p.relative_to(path)}:{p.stat().st_size}:{p.stat().st_mtime_ns};" for p in files)
    return hashlib.sha256(stamp.encode()).hexdigest()[:16]


def display_name(cfg: ModelConfig) -> str:
    return EMBEDDED_MODEL_NAME if cfg.source == "embedded" else str(cfg.name_or_path)


def bnb_config(cfg: ModelConfig):
    """`BitsAndBytesConfig` as in FastChat's train_lora.py, or None when not quantizing."""
    from transformers import BitsAndBytesConfig

    q = cfg.quantization
    if q.method == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=q.quant_type,
            bnb_4bit_use_double_quant=q.double_quant,
            bnb_4bit_compute_dtype=torch_dtype(q.compute_dtype),
            bnb_4bit_quant_storage=torch.uint8 if q.quant_storage == "uint8" else torch_dtype(q.quant_storage),
        )
    if q.method == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def check_quantization_backend(cfg: ModelConfig) -> None:
    """Refuse, before any weights load, a quantization this machine's bitsandbytes cannot run."""
    if cfg.quantization.method == "none":
        return
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise ModelLoadError(f"model.quantization.method={cfg.quantization.method} needs bitsandbytes: {exc}") from None


def check_attention_backend(cfg: ModelConfig) -> None:
    """Refuse, before any weights load, an attention implementation that cannot train on this machine (the base
    load and training check it; merging and evaluation load sdpa in its place)."""
    if cfg.attn_implementation == "flex_attention" and not torch.cuda.is_available():
        raise ModelLoadError("model.attn_implementation=flex_attention trains only on CUDA (PyTorch's flex attention "
                             "has no backward on CPU); use sdpa or eager here")


def load_tokenizer(cfg: Union[ModelConfig, TokenizerConfig]):
    from transformers import AutoTokenizer

    location = checkpoint_location(cfg)
    tokenizer = AutoTokenizer.from_pretrained(
        location, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
    )
    try:
        apply_template(tokenizer, cfg.chat_template)
    except TemplateError as exc:
        raise ModelLoadError(f"{display_name(cfg)}: {exc}") from None
    return tokenizer


def load_model(cfg: ModelConfig, *, quantize: bool = True, dtype: Optional[str] = None):
    """The base model: quantized per config (if `quantize`), else in `dtype` (default: `cfg.dtype`)."""
    from transformers import AutoModelForCausalLM

    if quantize:
        check_quantization_backend(cfg)
    if cfg.trust_remote_code:
        logger.warning("trust_remote_code=True: code from %s will run on this machine", display_name(cfg))
    if cfg.allow_pickle_weights:
        logger.warning("allow_pickle_weights=True: pickled weights of %s may run code when loaded", display_name(cfg))
    quantization = bnb_config(cfg) if quantize else None
    weights_dtype = torch_dtype(dtype or cfg.dtype)
    if quantization is not None and getattr(quantization, "load_in_4bit", False):
        weights_dtype = torch_dtype(cfg.quantization.compute_dtype)  # dtype of the layers bitsandbytes leaves unquantized
    device_map = {"": torch.cuda.current_device()} if torch.cuda.is_available() else {"": "cpu"}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            checkpoint_location(cfg),
            revision=cfg.revision,
            dtype=weights_dtype,
            quantization_config=quantization,
            device_map=device_map,
            attn_implementation=loading_attention(cfg),
            trust_remote_code=cfg.trust_remote_code,
            use_safetensors=None if cfg.allow_pickle_weights else True,
        )
    except OSError as exc:
        raise ModelLoadError(f"could not load model {display_name(cfg)}: {exc}") from exc
    except ValueError as exc:  # raised while the model is built, before its weights are read
        if "attention implementation" not in str(exc) and "attn_implementation" not in str(exc):
            raise
        raise ModelLoadError(f"model.attn_implementation={cfg.attn_implementation}: {str(exc).splitlines()[0]} "
                             "Use auto (what the family supports) or eager.") from None
    return model


def loading_attention(cfg: ModelConfig) -> Optional[str]:
    """The implementation to load with: None lets transformers pick what the family supports (sdpa, else eager);
    flex attention is switched on for training only (training.flex_attention_while_training)."""
    return None if cfg.attn_implementation in ("auto", "flex_attention") else cfg.attn_implementation


def weights_sha256(location: str) -> Optional[str]:
    """Content hash of a local checkpoint's safetensors files (None for a hub id: the revision pins it)."""
    path = Path(location)
    if not path.is_dir():
        return None
    digest = hashlib.sha256()
    for file in sorted(path.glob("*.safetensors")):
        digest.update(file.name.encode())
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 24), b""):
                digest.update(block)
    return digest.hexdigest()


def load_base(cfg: ModelConfig):
    """Load as configured and describe it: returns (model, tokenizer, BaseModelRef)."""
    check_attention_backend(cfg)
    start = time.perf_counter()
    tokenizer = load_tokenizer(cfg)
    model = load_model(cfg)
    seconds = time.perf_counter() - start
    location = checkpoint_location(cfg)
    revision = hub_commit(cfg.name_or_path, cfg.revision) if cfg.source == "hub" else None
    ref = BaseModelRef(
        # later steps load `ref.config`: pin a hub model to the commit loaded here, so a push to the hub
        # between steps cannot change the weights under the adapter
        config=cfg.model_copy(update={"revision": revision}) if revision else cfg,
        display_name=display_name(cfg),
        revision=revision,
        weights_sha256=weights_sha256(location),
        num_parameters=model.num_parameters(),
        footprint_bytes=model.get_memory_footprint(),
        unquantized_bytes=model.num_parameters() * torch_dtype(cfg.dtype).itemsize,
        load_seconds=round(seconds, 3),
    )
    return model, tokenizer, ref


@contextmanager
def padding_side(tokenizer, side: str):
    """Pad on `side` inside the block and restore the tokenizer's own side after it, so a tokenizer that is saved
    later ships as the base model had it (left for generation, right for logits comparisons are our choices, not
    the user's)."""
    before = tokenizer.padding_side
    tokenizer.padding_side = side
    try:
        yield tokenizer
    finally:
        tokenizer.padding_side = before


def save_tokenizer(tokenizer, directory) -> None:
    """Save without the padding/truncation state earlier calls left on the Rust backend (transformers 5 keeps
    `padding=True` enabled there, and it would be written to tokenizer.json: every user of the saved tokenizer would
    get padded encodings without asking)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        backend.no_padding()
        backend.no_truncation()
    tokenizer.save_pretrained(directory)
    _write_added_tokens_decoder(tokenizer, Path(directory))
    sentencepiece = _sentencepiece_model(tokenizer)
    if sentencepiece is not None and not (Path(directory) / "tokenizer.model").exists():
        # transformers 5 saves a SentencePiece family's tokenizer as tokenizer.json only; llama.cpp's converter (and
        # tools that read the original format) need the model it came from, which fine-tuning does not change
        shutil.copyfile(sentencepiece, Path(directory) / "tokenizer.model")


def _sentencepiece_model(tokenizer) -> Optional[Path]:
    """The tokenizer.model beside the checkpoint the tokenizer was loaded from (a local directory or the hub cache)."""
    source = getattr(tokenizer, "name_or_path", None) or ""
    local = Path(source) / "tokenizer.model"
    if local.is_file():
        return local
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(source, "tokenizer.model")
    except ValueError:  # not a repository id
        return None
    return Path(cached) if isinstance(cached, str) else None


def _write_added_tokens_decoder(tokenizer, directory: Path) -> None:
    """Keep `added_tokens_decoder` in tokenizer_config.json, as transformers 4 wrote it and as checkpoints on the hub
    have it: transformers 5 no longer writes it, and llama.cpp's converter reads a SentencePiece model's control tokens
    (Gemma's <start_of_turn>, Phi-3's <|user|>) only from there, so without it a GGUF of the export reads them as
    text. transformers 5 reads it back unchanged (tests/test_model_families.py)."""
    config_file = directory / "tokenizer_config.json"
    added = getattr(tokenizer, "added_tokens_decoder", None)
    if not added or not config_file.is_file():
        return
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if "added_tokens_decoder" in config:
        return
    config["added_tokens_decoder"] = {
        str(i): {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized, "rstrip": t.rstrip,
                 "single_word": t.single_word, "special": t.special} for i, t in sorted(added.items())}
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
