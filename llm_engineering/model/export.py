"""Write the servable model directory: safetensors weights, tokenizer with its chat template, a generation config whose
eos/pad ids match the tokenizer, and a model card.

The directory is assembled under a temporary name beside the target and renamed into place only when complete, so an
interrupted export never leaves a directory that looks finished.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

WEIGHT_AND_TOKENIZER_SUFFIXES = (".safetensors", ".json", ".jinja", ".model", ".txt")


class ExportError(RuntimeError):
    pass


def generation_config(tokenizer, base: dict[str, Any]) -> dict[str, Any]:
    """Greedy-by-default generation settings that stop at the chat template's end-of-turn token."""
    config = {k: v for k, v in base.items() if k not in ("transformers_version",)}
    config.update(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if tokenizer.bos_token_id is not None:
        config["bos_token_id"] = tokenizer.bos_token_id
    return config


def model_card(base_model: str, data: dict[str, Any], config: dict[str, Any], metrics: dict[str, float]) -> str:
    rows = "\n".join(f"| {k} | {v:.6g} |" for k, v in sorted(metrics.items()))
    return f"""---
base_model: {base_model}
library_name: transformers
tags: [lora, sft, llm_engineering]
---
# Fine-tuned {base_model}

LoRA adapter trained with TRL SFT and merged into the base weights by `llm_engineering`.

## Data
{yaml.safe_dump(data, sort_keys=True).strip()}

## Metrics
| metric | value |
|---|---|
{rows}

## Usage
```python
from transformers import AutoModelForCausalLM, AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained("<this directory>")
model = AutoModelForCausalLM.from_pretrained("<this directory>")
inputs = tokenizer.apply_chat_template([{{"role": "user", "content": "..."}}], add_generation_prompt=True,
                                       return_tensors="pt", return_dict=True)
print(tokenizer.decode(model.generate(**inputs, max_new_tokens=64)[0], skip_special_tokens=True))
```

## Configuration
```yaml
{yaml.safe_dump(config, sort_keys=False).strip()}
```
"""


def check_target(output_dir: Path, overwrite: bool) -> None:
    """Fail early (before any heavy work) if the export would clobber a directory the config says to keep."""
    if output_dir.exists() and not overwrite:
        raise ExportError(f"export.output_dir {output_dir} already exists and export.overwrite is false")
    if output_dir.exists() and not output_dir.is_dir():
        raise ExportError(f"export.output_dir {output_dir} exists and is not a directory")


def write_export(merged_dir: Path, output_dir: Path, tokenizer, card: str, overwrite: bool) -> Path:
    """Assemble the export beside `output_dir` and rename it into place; returns the final directory."""
    check_target(output_dir, overwrite)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=output_dir.parent))
    try:
        for file in sorted(merged_dir.iterdir()):
            if file.is_file() and file.suffix in WEIGHT_AND_TOKENIZER_SUFFIXES:
                shutil.copy2(file, staging / file.name)
        base_generation = _read_json(merged_dir / "generation_config.json")
        (staging / "generation_config.json").write_text(json.dumps(generation_config(tokenizer, base_generation), indent=2))
        (staging / "README.md").write_text(card)
        os.chmod(staging, 0o755)
        _replace_dir(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir


def _replace_dir(new: Path, target: Path) -> None:
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.rename(target, old)
    os.rename(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def load_exported(output_dir: Path):
    """Load the export with nothing but plain transformers, as a user serving it would."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    model = AutoModelForCausalLM.from_pretrained(output_dir, use_safetensors=True)
    return model, tokenizer


def verify_export(output_dir: Path, row: dict, expected: str, max_new_tokens: int):
    """Reload the export with plain transformers and check it reproduces the merged model's greedy answer.
    Returns the reloaded (model, tokenizer)."""
    from llm_engineering.evaluation import generate

    model, tokenizer = load_exported(output_dir)
    [(text, _)] = generate(model, tokenizer, [row["messages"][:-1]], max_new_tokens, batch_size=1)
    if text != expected:
        raise ExportError(f"{output_dir}: reloaded export answers {text!r}, the merged model answered {expected!r}")
    return model, tokenizer
