"""Inject a PEFT LoRA adapter into the base model, checking the target modules against the real model first."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from llm_engineering.config import AdapterConfig


class AdapterConfigError(ValueError):
    """The adapter settings do not fit the model; the message lists what the model has."""


@dataclass(frozen=True)
class AdapterStats:
    trainable_parameters: int
    total_parameters: int
    target_modules: list[str]
    lora_module_count: int

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable_parameters / self.total_parameters


def linear_module_names(model) -> list[str]:
    """Distinct leaf names of the model's linear layers (what `target_modules` is matched against)."""
    import bitsandbytes as bnb  # noqa: F401  (import registers bnb's Linear4bit/Linear8bitLt, subclasses of Linear)

    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    return sorted(names)


def check_target_modules(model, cfg: AdapterConfig) -> None:
    if cfg.target_modules == "all-linear":
        return
    available = linear_module_names(model)
    unknown = [t for t in cfg.target_modules if not any(re.fullmatch(t, name) for name in available)]
    if unknown:
        raise AdapterConfigError(
            f"adapter.target_modules: {unknown} match no linear module of this model; "
            f"its linear modules are {available} (or use 'all-linear')"
        )


def lora_config(cfg: AdapterConfig):
    from peft import LoraConfig, TaskType

    return LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        bias=cfg.bias,
        target_modules=cfg.target_modules,
        task_type=TaskType.CAUSAL_LM,
    )


def is_quantized(model) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def prepare_for_training(model, cfg: AdapterConfig):
    """For a quantized base: PEFT's k-bit preparation (fp32 norms, input grads, optional checkpointing)."""
    from peft import prepare_model_for_kbit_training

    if is_quantized(model):
        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    return model


def inject_adapter(model, cfg: AdapterConfig):
    """The base model wrapped as a trainable PeftModel, and its parameter counts exactly as PEFT reports them."""
    from peft import get_peft_model

    check_target_modules(model, cfg)
    torch.manual_seed(cfg.seed)  # LoRA A is randomly initialised: same seed, same adapter
    peft_model = get_peft_model(prepare_for_training(model, cfg), lora_config(cfg))
    trainable, total = peft_model.get_nb_trainable_parameters()
    targets = sorted({t.rsplit(".", 1)[-1] for t in peft_model.peft_config["default"].target_modules})
    lora_modules = sum(1 for name, _ in peft_model.named_modules() if name.endswith(".lora_A"))
    return peft_model, AdapterStats(trainable, total, targets, lora_modules)


def save_adapter(peft_model, directory: Path) -> Path:
    """adapter_config.json + adapter_model.safetensors."""
    peft_model.save_pretrained(directory, safe_serialization=True)
    return directory
