"""Merge a LoRA adapter into a safetensors checkpoint one shard at a time.

Peak memory is about one shard (in fp32) plus the adapter, whatever the model's size, instead of the whole model. The
arithmetic is PEFT's `merge_and_unload` (W + (B @ A) * scaling in fp32), and with `base_weights: dequantized` every
linear weight first takes the same quantize -> dequantize round trip as in training, so the result is bit-identical to
the in-memory merge in `merge_adapter.py` (tested).

Which tensors are linear weights is read from the model's own module tree, built on the meta device (no memory).
Supports plain LoRA and rsLoRA; DoRA and `modules_to_save` adapters are refused (use the in-memory merge).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from llm_engineering.config import MergeConfig, ModelConfig
from llm_engineering.merge.trained_view import trained_view
from llm_engineering.model.loading import checkpoint_location
from llm_engineering.model.precision import resolve_dtype, torch_dtype

INDEX = "model.safetensors.index.json"
ADAPTER_PREFIX = "base_model.model."


class StreamedMergeError(ValueError):
    pass


@dataclass(frozen=True)
class StreamedMergeStats:
    shards: int
    merged_tensors: int
    round_tripped_tensors: int


def checkpoint_shards(checkpoint: Path) -> list[str]:
    index = checkpoint / INDEX
    if index.is_file():
        return sorted(set(json.loads(index.read_text())["weight_map"].values()))
    if (checkpoint / "model.safetensors").is_file():
        return ["model.safetensors"]
    raise StreamedMergeError(f"{checkpoint}: no model.safetensors or {INDEX}")


def linear_weight_names(checkpoint: Path) -> set[str]:
    """`<module>.weight` of every linear layer bitsandbytes would quantize (all but the output head)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(checkpoint)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    output = skeleton.get_output_embeddings()
    return {f"{n}.weight" for n, m in skeleton.named_modules() if isinstance(m, torch.nn.Linear) and m is not output}


def lora_deltas(adapter_dir: Path) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], float]:
    """{"<module>.weight": (A, B)} in fp32, and the scaling PEFT applies."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    if config.get("use_dora"):
        raise StreamedMergeError("streamed merge does not support DoRA adapters; use merge.method: in_memory")
    if config.get("modules_to_save"):
        raise StreamedMergeError("streamed merge does not support modules_to_save; use merge.method: in_memory")
    if config.get("fan_in_fan_out"):
        raise StreamedMergeError("streamed merge does not support fan_in_fan_out adapters")
    r, alpha = config["r"], config["lora_alpha"]
    scaling = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    with safe_open(adapter_dir / "adapter_model.safetensors", "pt") as f:
        for key in f.keys():
            module, _, kind = key.removeprefix(ADAPTER_PREFIX).rpartition(".lora_")
            pairs.setdefault(f"{module}.weight", {})[kind.split(".")[0]] = f.get_tensor(key).float()
    return {name: (p["A"], p["B"]) for name, p in pairs.items()}, scaling


def streamed_merge(model_cfg: ModelConfig, cfg: MergeConfig, adapter_dir: Path, output_dir: Path) -> StreamedMergeStats:
    checkpoint = Path(checkpoint_location(model_cfg))
    if not checkpoint.is_dir():
        from huggingface_hub import snapshot_download

        checkpoint = Path(snapshot_download(str(checkpoint), revision=model_cfg.revision,
                                            allow_patterns=["*.safetensors", "*.json", "*.jinja", "*.txt", "*.model"]))
    deltas, scaling = lora_deltas(adapter_dir)
    linear = linear_weight_names(checkpoint) if cfg.base_weights == "dequantized" else set()
    missing = set(deltas) - linear_weight_names(checkpoint)
    if missing:
        raise StreamedMergeError(f"adapter modules not in the checkpoint's linear layers: {sorted(missing)[:5]}")
    out_dtype = torch_dtype(cfg.dtype)
    output_dir.mkdir(parents=True, exist_ok=True)
    merged = round_tripped = total_bytes = 0
    shards = checkpoint_shards(checkpoint)
    for shard in shards:
        tensors = {}
        with safe_open(checkpoint / shard, "pt") as f:
            metadata = f.metadata()
            for name in f.keys():
                tensor = f.get_tensor(name)
                if name in linear:
                    tensor = trained_view(tensor, model_cfg)
                    round_tripped += 1
                if name in deltas:
                    a, b = deltas[name]
                    tensor = tensor.float() + (b @ a) * scaling  # PEFT's get_delta_weight, in fp32
                    merged += 1
                tensors[name] = tensor.to(out_dtype) if tensor.is_floating_point() else tensor
                total_bytes += tensors[name].nbytes
        save_file(tensors, output_dir / shard, metadata=metadata or {"format": "pt"})
        del tensors
    _copy_side_files(checkpoint, output_dir, resolve_dtype(cfg.dtype), total_bytes)
    return StreamedMergeStats(shards=len(shards), merged_tensors=merged, round_tripped_tensors=round_tripped)


def _copy_side_files(checkpoint: Path, output_dir: Path, dtype: str, total_bytes: int) -> None:
    """Config (with the new dtype, without any quantization_config), index, tokenizer, generation config."""
    for file in checkpoint.iterdir():
        if file.is_file() and not file.name.endswith(".safetensors") and file.suffix in (".json", ".jinja", ".txt",
                                                                                           ".model"):
            shutil.copy2(file, output_dir / file.name)
    config = json.loads((output_dir / "config.json").read_text())
    config.pop("quantization_config", None)
    config["dtype"] = dtype
    (output_dir / "config.json").write_text(json.dumps(config, indent=2))
    index = output_dir / INDEX
    if index.is_file():
        data = json.loads(index.read_text())
        data["metadata"] = {**data.get("metadata", {}), "total_size": total_bytes}
        index.write_text(json.dumps(data, indent=2))
