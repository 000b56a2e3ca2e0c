"""Write the servable model directory and prove it serves the model we trained.

Contents: sharded safetensors weights, tokenizer with its chat template, a generation config whose eos/pad ids match the
tokenizer, a model card, the LoRA adapter alone under `adapter/` (to serve on top of the base model instead), and
`SHA256SUMS` listing every file (`sha256sum -c SHA256SUMS` checks a copy).

The directory is assembled under a temporary name beside the target and renamed into place only when complete, so an
interrupted export never leaves a directory that looks finished. It is then reloaded with plain `transformers` and its
logits compared with the in-memory merged model's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from dataclasses import asdict
from typing import Any, Optional, Sequence

import torch

from llm_engineering.data.templates import row_text
from llm_engineering.model.loading import padding_side, save_tokenizer

logger = logging.getLogger(__name__)

MANIFEST = "SHA256SUMS"
GGUF_CHECK = "gguf_check.json"
ADAPTER_SUBDIR = "adapter"


class ExportError(RuntimeError):
    pass


def end_token_ids(tokenizer, base: dict[str, Any]) -> list[int]:
    """Every end token the base model stops at (Llama-3.1 has three: end of text, of message, of turn), with the
    tokenizer's end-of-turn token among them."""
    configured = base.get("eos_token_id")
    ids = list(configured) if isinstance(configured, (list, tuple)) else [configured]
    if tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return [i for i in ids if i is not None]


def generation_config(tokenizer, base: dict[str, Any]) -> dict[str, Any]:
    """Greedy-by-default generation settings that stop at every end token of the base model and of the chat template.
    `do_sample` is written out: transformers 5's text-generation pipeline (what `mlflow models serve` runs) samples at
    temperature 0.7 unless the model's generation config says otherwise."""
    config = {k: v for k, v in base.items() if v is not None and k not in ("transformers_version", "_from_model_config")}
    config["do_sample"] = False  # what the evaluation and the serving check measured (the endpoint is greedy)
    ends = end_token_ids(tokenizer, base)
    config.update(eos_token_id=ends if len(ends) > 1 else ends[0], pad_token_id=tokenizer.pad_token_id)
    if tokenizer.bos_token_id is not None:
        config["bos_token_id"] = tokenizer.bos_token_id
    return config


def check_push_credentials(repo_id: Optional[str]) -> None:
    """A hub push needs a token from the environment; fail before any heavy work if it is missing."""
    if repo_id and not os.environ.get("HF_TOKEN"):
        raise ExportError(f"export.push_to_hub={repo_id!r} needs a Hugging Face token in the HF_TOKEN environment "
                          "variable (it is never read from the config)")


def push_to_hub(output_dir: Path, repo_id: str, private: bool = True) -> str:
    """Upload the verified export (weights, tokenizer, card, adapter/, SHA256SUMS); returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=os.environ.get("HF_TOKEN"))
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(folder_path=str(output_dir), repo_id=repo_id, repo_type="model",
                                   commit_message="Upload fine-tuned model from llm_engineering")
    except Exception as exc:  # network, auth, offline mode: the local export stays as it is
        raise ExportError(f"push to hub '{repo_id}' failed ({type(exc).__name__}: {exc}); "
                          f"the local export at {output_dir} is complete and unchanged") from exc
    return str(commit.commit_url)


def check_target(output_dir: Path, overwrite: bool) -> None:
    """Fail early (before any heavy work) if the export would clobber a directory the config says to keep."""
    if output_dir.exists() and not overwrite:
        raise ExportError(f"export.output_dir {output_dir} already exists and export.overwrite is false")
    if output_dir.exists() and not output_dir.is_dir():
        raise ExportError(f"export.output_dir {output_dir} exists and is not a directory")


def write_export(
    model,
    tokenizer,
    output_dir: Path,
    card: str,
    *,
    adapter_dir: Optional[Path] = None,
    max_shard_size: str = "5GB",
    overwrite: bool = True,
    gguf_types: Sequence[str] = (),
    check_rows: Sequence[dict] = (),
) -> Path:
    """Assemble the export beside `output_dir`, write its manifest last, and rename it into place. `gguf_types`:
    also GGUF files (and an Ollama Modelfile), each checked against `model` on `check_rows` first."""
    check_target(output_dir, overwrite)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=output_dir.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True, max_shard_size=max_shard_size)
        save_tokenizer(tokenizer, staging)
        base_generation = model.generation_config.to_dict() if model.generation_config else {}
        (staging / "generation_config.json").write_text(json.dumps(generation_config(tokenizer, base_generation), indent=2))
        (staging / "README.md").write_text(card)
        if adapter_dir is not None:
            shutil.copytree(adapter_dir, staging / ADAPTER_SUBDIR)
        if gguf_types:
            _write_gguf_files(model, tokenizer, staging, output_dir.name, gguf_types, check_rows, base_generation)
        write_manifest(staging)
        os.chmod(staging, 0o755)
        _replace_dir(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir


def _write_gguf_files(model, tokenizer, staging: Path, name: str, gguf_types, check_rows, base_generation) -> None:
    from llm_engineering.export.gguf_file import write_gguf_files
    from llm_engineering.export.modelfile import modelfile

    texts = [row_text(tokenizer, r) for r in check_rows]
    reports = write_gguf_files(model, tokenizer, staging, gguf_types, list(check_rows), texts)
    (staging / GGUF_CHECK).write_text(json.dumps([asdict(r) for r in reports], indent=2))
    served = min(reports, key=lambda r: r.bytes).file  # the smallest file that passed
    ends = tokenizer.convert_ids_to_tokens(end_token_ids(tokenizer, base_generation))
    (staging / "Modelfile").write_text(modelfile(tokenizer, served, ends))


def gguf_metrics(output_dir: Path) -> dict[str, float]:
    """The GGUF check figures an export recorded, as metrics (gguf_<type>_top1_agreement, ...; empty: no GGUF)."""
    path = output_dir / GGUF_CHECK
    reports = json.loads(path.read_text()) if path.is_file() else []
    return {f"gguf_{r['gguf_type']}_{k}": float(r[k]) for r in reports
            for k in ("bytes", "seconds", "top1_agreement", "mean_kl", "max_abs_logit_diff")}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: Path) -> None:
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)
    lines = [f"{_sha256(p)}  {p.relative_to(directory).as_posix()}" for p in files]
    (directory / MANIFEST).write_text("\n".join(lines) + "\n")


def verify_manifest(directory: Path) -> list[str]:
    """Problems found checking `SHA256SUMS` against the files (empty list: intact)."""
    manifest = directory / MANIFEST
    if not manifest.is_file():
        return [f"{manifest} is missing"]
    problems = []
    listed = set()
    for line in manifest.read_text().splitlines():
        expected, name = line.split("  ", 1)
        listed.add(name)
        path = directory / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif _sha256(path) != expected:
            problems.append(f"{name}: checksum mismatch")
    extra = {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()} - listed - {MANIFEST}
    problems += [f"{name}: not in the manifest" for name in sorted(extra)]
    return problems


def _replace_dir(new: Path, target: Path) -> None:
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.rename(target, old)
    os.rename(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def load_exported(output_dir: Path):
    """Load the export with nothing but plain transformers, as a user serving it would."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    model = AutoModelForCausalLM.from_pretrained(output_dir, use_safetensors=True)
    return model, tokenizer


def serving_sample(model, tokenizer, rows: list[dict], max_tokens: int) -> Optional[dict[str, Any]]:
    """The exported model's own greedy answer to the first chat prompt among `rows`, as a chat request to the served
    model would ask it: what `mlflow models serve` of this version must answer (None: no chat rows)."""
    from llm_engineering.data.formats import chat_messages
    from llm_engineering.model.generation import generate

    row = next((r for r in rows if r.get("messages") and not r.get("tools")), None)
    if row is None:
        return None
    messages = chat_messages(row["messages"][:-1])
    [(content, stopped)] = generate(model, tokenizer, [messages], max_tokens, batch_size=1)
    # MLflow's chat model strips the answer on the left only (a trailing "\x1c" or newline is part of it)
    return {"messages": messages, "max_tokens": max_tokens, "content": content.lstrip(), "stopped": stopped}


@torch.no_grad()
def verify_export(output_dir: Path, reference_model, rows: list[dict], tolerance: float = 1e-5):
    """Check the manifest, reload with plain transformers, and compare logits with `reference_model` on `rows`.
    Returns the reloaded (model, tokenizer) and the max |Δlogit|."""
    problems = verify_manifest(output_dir)
    if problems:
        raise ExportError(f"{output_dir}: manifest check failed: {problems}")
    model, tokenizer = load_exported(output_dir)
    model.eval()
    reference_model.eval()
    texts = [row_text(tokenizer, r) for r in rows]
    with padding_side(tokenizer, "right"):
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    mask = batch["attention_mask"].bool()
    reloaded = model(**batch.to(model.device)).logits.float().cpu()
    expected = reference_model(**batch.to(reference_model.device)).logits.float().cpu()
    max_diff = (reloaded - expected).abs()[mask].max().item()
    if max_diff > tolerance:
        raise ExportError(f"{output_dir}: reloaded export's logits differ from the merged model's by {max_diff:.3g}")
    return model, tokenizer, max_diff
