"""Inject a PEFT LoRA adapter into the base model, checking the target modules against the real model first."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Union

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


PRESET_PATTERNS = {  # model-agnostic: judged by the block a linear layer sits in, not by model family
    "attention": re.compile(r"(^|\.)(self_attn|attn|attention|self_attention)(\.|$)", re.IGNORECASE),
    "mlp": re.compile(r"(^|\.)(mlp|feed_forward|ffn|ffw)(\.|$)", re.IGNORECASE),
}


def linear_modules(model) -> list[str]:
    """Full names of the model's linear layers, output head excluded (what LoRA can target)."""
    import bitsandbytes as bnb  # noqa: F401  (import registers bnb's Linear4bit/Linear8bitLt, subclasses of Linear)

    output = model.get_output_embeddings()
    return [name for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and module is not output]


def linear_module_names(model) -> list[str]:
    """Distinct leaf names of the model's linear layers (what a `target_modules` list is matched against)."""
    return sorted({name.rsplit(".", 1)[-1] for name in linear_modules(model)})


def _matches_suffix(name: str, key: str) -> bool:
    return name == key or name.endswith("." + key)


def resolve_target_modules(model, cfg: AdapterConfig) -> Union[str, list[str]]:
    """What to hand PEFT as `target_modules`, after checking that every requested target exists in this model."""
    targets = cfg.target_modules
    linear = linear_modules(model)
    if isinstance(targets, str) and targets in ("all-linear", "all"):
        # PEFT takes layers_to_transform only with a list of names, so spell all-linear out then.
        return linear_module_names(model) if cfg.layers_to_transform else "all-linear"
    available = f"its linear modules are {linear_module_names(model)} (or use 'all-linear')"
    if isinstance(targets, str) and targets in PRESET_PATTERNS:
        leaves = sorted({n.rsplit(".", 1)[-1] for n in linear if PRESET_PATTERNS[targets].search(n.rsplit(".", 1)[0])})
        if not leaves:
            raise AdapterConfigError(f"adapter.target_modules: preset '{targets}' matches no linear module; {available}")
        return leaves
    if isinstance(targets, str):  # a regex, matched by PEFT against full module names
        if not any(re.fullmatch(targets, n) for n in linear):
            raise AdapterConfigError(f"adapter.target_modules: regex {targets!r} matches no linear module; {available}")
        return targets
    unknown = [t for t in targets if not any(_matches_suffix(n, t) for n in linear)]
    if unknown:
        raise AdapterConfigError(f"adapter.target_modules: {unknown} match no linear module of this model; {available}")
    return list(targets)


def check_other_modules(model, cfg: AdapterConfig) -> None:
    names = [name for name, _ in model.named_modules()]
    missing = [m for m in cfg.modules_to_save or [] if not any(_matches_suffix(n, m) for n in names)]
    if missing:
        raise AdapterConfigError(f"adapter.modules_to_save: {missing} are not modules of this model")
    layers = getattr(model.config, "num_hidden_layers", None)
    if cfg.layers_to_transform and layers is not None and max(cfg.layers_to_transform) >= layers:
        raise AdapterConfigError(
            f"adapter.layers_to_transform: {cfg.layers_to_transform} out of range; the model has layers 0..{layers - 1}"
        )


def lora_config(cfg: AdapterConfig, target_modules: Union[str, list[str]]):
    from peft import LoraConfig, TaskType

    return LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        bias=cfg.bias,
        target_modules=target_modules,
        modules_to_save=cfg.modules_to_save,
        layers_to_transform=cfg.layers_to_transform,
        use_rslora=cfg.use_rslora,
        use_dora=cfg.use_dora,
        init_lora_weights=True if cfg.init_lora_weights == "default" else cfg.init_lora_weights,
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

    targets = resolve_target_modules(model, cfg)
    check_other_modules(model, cfg)
    torch.manual_seed(cfg.seed)  # LoRA A is randomly initialised: same seed, same adapter
    peft_model = get_peft_model(prepare_for_training(model, cfg), lora_config(cfg, targets))
    trainable, total = peft_model.get_nb_trainable_parameters()
    targets = sorted({t.rsplit(".", 1)[-1] for t in peft_model.peft_config["default"].target_modules})
    lora_modules = sum(1 for name, _ in peft_model.named_modules() if name.endswith(".lora_A"))
    return peft_model, AdapterStats(trainable, total, targets, lora_modules)


def save_adapter(peft_model, directory: Path) -> Path:
    """adapter_config.json + adapter_model.safetensors."""
    peft_model.save_pretrained(directory, safe_serialization=True)
    return directory
