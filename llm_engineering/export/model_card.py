"""The model card (README.md of the export): how the model was made, what it scored, how to serve it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import yaml

from llm_engineering.export.export_dir import ADAPTER_SUBDIR, MANIFEST

logger = logging.getLogger(__name__)

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256)  # vLLM's max_lora_rank choices: it refuses adapters of other ranks


def check_vllm_rank(rank: int) -> Optional[str]:
    """A warning when vLLM will refuse to serve an adapter of this rank (None: it will serve it)."""
    if rank in VLLM_LORA_RANKS:
        return None
    message = (f"adapter.r={rank}: vLLM serves LoRA ranks {', '.join(map(str, VLLM_LORA_RANKS))} only, so "
               "`vllm serve --enable-lora` will refuse adapter/; the merged model serves anywhere")
    logger.warning(message)
    return message


def serving_section(base_model: str, config: dict[str, Any]) -> str:
    export = config.get("export", {})
    name = Path(export.get("output_dir", "model")).name
    rank = config.get("adapter", {}).get("r")
    lines = ["## Serving",
             "- MLflow (OpenAI-style chat, from the registry): `mlflow models serve -m \"models:/<name>@champion\" "
             "--env-manager local`, then `POST /invocations` with `{\"messages\": [...], \"max_tokens\": 64}`.",
             f"- vLLM, the adapter on the base: `vllm serve {base_model} --enable-lora --max-lora-rank "
             f"{max(rank or 16, 16)} --lora-modules {name}=<this directory>/{ADAPTER_SUBDIR}`"
             + ("" if rank in VLLM_LORA_RANKS else f" (rank {rank}: vLLM will refuse it)")]
    if export.get("gguf"):
        lines.append(f"- llama.cpp / Ollama: {', '.join(f'`model-{t}.gguf`' for t in export['gguf'])}; "
                     "`ollama create <name> -f Modelfile` here, or `llama-server -m model-<type>.gguf`.")
    return "\n".join(lines)


def training_method(method: str, config: dict[str, Any]) -> str:
    """How the adapter was trained, said in the card: `method` is sft, or the preference method of the run."""
    if method == "sft":
        return "trained with TRL SFT"
    start = (config.get("preference") or {}).get("start_adapter")
    origin = f", starting from the adapter `{start}`" if start else ", from a fresh adapter"
    if method == "grpo":
        rewards = ", ".join(r["function"] for r in config["preference"].get("rewards", []))
        return f"tuned with TRL GRPO on sampled completions scored by {rewards}{origin}"
    return f"tuned with TRL {method.upper()} on preference pairs{origin}"


def base_weights_section(lineage: Optional[dict]) -> str:
    """Where the base weights came from, when they were read from a GGUF file (model/gguf_source.py)."""
    if not lineage:
        return ""
    types = ", ".join(f"{name} x {count}" for name, count in lineage["tensor_types"].items())
    return (f"\n## Base weights\nRead from the GGUF file `{lineage['file']}` (SHA-256 `{lineage['sha256']}`, "
            f"architecture `{lineage['architecture']}`; tensors {types}). The weights were dequantized to float from "
            "these types by transformers' GGUF reader before fine-tuning: the base model here is that dequantization, "
            "not the checkpoint the file was quantized from.\n")


def model_card(base_model: str, data: dict[str, Any], config: dict[str, Any], metrics: dict[str, float],
               method: str = "sft", base_lineage: Optional[dict] = None) -> str:
    rows = "\n".join(f"| {k} | {v:.6g} |" for k, v in sorted(metrics.items()))
    tag, how = method, training_method(method, config)
    if method == "sft":  # the schema's preference defaults played no part in an SFT run
        config = {k: v for k, v in config.items() if k != "preference"}
    return f"""---
base_model: {base_model}
library_name: transformers
tags: [lora, {tag}, llm_engineering]
---
# Fine-tuned {base_model}

LoRA adapter {how}, merged into the base weights by `llm_engineering`. The adapter alone is in
`{ADAPTER_SUBDIR}/`; `{MANIFEST}` lists the SHA-256 of every file.
{base_weights_section(base_lineage)}
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

{serving_section(base_model, config)}

## Configuration
```yaml
{yaml.safe_dump(config, sort_keys=False).strip()}
```
"""
