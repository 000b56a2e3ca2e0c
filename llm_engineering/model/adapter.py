"""Inject a PEFT LoRA adapter into the base model, checking the target modules against the real model first."""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch

from llm_engineering.config import AdapterConfig

logger = logging.getLogger(__name__)


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


def embedding_modules(model) -> list[str]:
    """Full names of the input embeddings and the output head."""
    ends = [model.get_input_embeddings(), model.get_output_embeddings()]
    return [name for name, module in model.named_modules() if any(module is end for end in ends if end is not None)]


def adapts_tied_embeddings(model, target_modules, modules_to_save) -> bool:
    """The model shares one tensor between its input embeddings and its output head, and the adapter changes one of
    them. Merging then writes the head's delta into the embeddings too (the shared tensor), so the merged model stops
    computing what the adapter model did (Qwen2.5-0.5B collapsing after merge: transformers#45127, peft#2018)."""
    if not getattr(model.config, "tie_word_embeddings", False):
        return False
    named = ([] if isinstance(target_modules, str) else list(target_modules or [])) + list(modules_to_save or [])
    return any(_matches_suffix(module, key) for module in embedding_modules(model) for key in named)


def untie_embeddings(model) -> None:
    """Give the output head its own copy of the shared tensor, before an adapter that changes the head or the
    embeddings is attached: training, merge and export then treat them as two layers, and the export is saved
    untied (its config says so), computing exactly what the adapter model computed."""
    head = model.get_output_embeddings()
    head.weight = torch.nn.Parameter(head.weight.detach().clone(), requires_grad=head.weight.requires_grad)
    model.config.tie_word_embeddings = False
    logger.warning("the adapter changes the output head or the input embeddings of a model that ties them: "
                   "they are untied, and the export saves both")


def attach_adapter(model, adapter_dir: Path, is_trainable: bool = False):
    """A saved adapter on `model` (the one way the stages load one), untying the embeddings where it changes them."""
    from peft import PeftModel

    saved = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    if adapts_tied_embeddings(model, saved.get("target_modules"), saved.get("modules_to_save")):
        untie_embeddings(model)
    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=is_trainable)


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
    # the embeddings and the output head only when named: PEFT adapts them too, and all-linear leaves them out
    targetable = linear + embedding_modules(model)
    unknown = [t for t in targets if not any(_matches_suffix(n, t) for n in targetable)]
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
        # loftq starts from the default init and is replaced after injection (replace_lora_weights_loftq)
        init_lora_weights=True if cfg.init_lora_weights in ("default", "loftq") else cfg.init_lora_weights,
        task_type=TaskType.CAUSAL_LM,
    )


def is_quantized(model) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def prepare_for_training(model, cfg: AdapterConfig):
    """Freeze the base; for a quantized base with fp16/fp32 weights, PEFT's k-bit preparation (which upcasts the
    unquantized weights to fp32 because fp16 overflows). bf16 has fp32's exponent range, so a bf16 base keeps its
    bf16 embeddings and norms: half their memory, and no fp32->bf16 casts of them under autocast on every step
    (measured on CPU: bench/sft_speed.py)."""
    from peft import prepare_model_for_kbit_training

    if is_quantized(model) and model.dtype != torch.bfloat16:
        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    for param in model.parameters():
        param.requires_grad = False
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return model


def check_init_supported(cfg: AdapterConfig) -> None:
    """Refuse, before any model loads, an initialisation this machine cannot run."""
    if cfg.init_lora_weights == "loftq" and not torch.cuda.is_available():
        # PEFT's LoftQ computes on "cuda" (or "xpu") unconditionally
        raise AdapterConfigError("adapter.init_lora_weights=loftq needs a CUDA GPU (PEFT's LoftQ runs its SVD there); "
                                 "use default, gaussian or pissa on CPU")


def reinitialises_base(cfg: AdapterConfig) -> bool:
    """PiSSA replaces the base weights by the residual: a step that trains must redo the init on its own base."""
    return cfg.init_lora_weights.startswith("pissa")


def inject_adapter(model, cfg: AdapterConfig, checkpoint: Optional[str] = None):
    """The base model wrapped as a trainable PeftModel, and its parameter counts exactly as PEFT reports them.
    `checkpoint` (the base's safetensors directory or hub id) is needed for LoftQ, which reads the original weights."""
    from peft import get_peft_model, replace_lora_weights_loftq

    check_init_supported(cfg)
    targets = resolve_target_modules(model, cfg)
    check_other_modules(model, cfg)
    torch.manual_seed(cfg.seed)  # LoRA A (and PiSSA's randomized SVD) are random: same seed, same adapter
    if adapts_tied_embeddings(model, targets, cfg.modules_to_save):
        untie_embeddings(model)
    peft_model = get_peft_model(prepare_for_training(model, cfg), lora_config(cfg, targets))
    if cfg.init_lora_weights == "loftq":
        if not is_quantized(model) or checkpoint is None:
            raise AdapterConfigError("adapter.init_lora_weights=loftq needs a 4-bit base and its checkpoint")
        replace_lora_weights_loftq(peft_model, model_path=checkpoint)
    trainable, total = peft_model.get_nb_trainable_parameters()
    targets = sorted({t.rsplit(".", 1)[-1] for t in peft_model.peft_config["default"].target_modules})
    lora_modules = sum(1 for name, _ in peft_model.named_modules() if name.endswith(".lora_A"))
    return peft_model, AdapterStats(trainable, total, targets, lora_modules)


def save_adapter(peft_model, directory: Path, initial_adapter: Optional[Path] = None) -> Path:
    """adapter_config.json + adapter_model.safetensors. With `initial_adapter` (PiSSA), the trained adapter is converted
    to a plain LoRA (rank 2r) that applies to the original base weights, so merge and serving need nothing special."""
    if initial_adapter is None:
        peft_model.save_pretrained(directory, safe_serialization=True)
        return directory
    with tempfile.TemporaryDirectory() as scratch:  # PEFT rewrites the initial adapter's config: never the artifact
        initial = Path(scratch) / "initial"
        shutil.copytree(initial_adapter, initial)
        peft_model.save_pretrained(directory, safe_serialization=True,
                                   path_initial_model_for_weight_conversion=str(initial))
    return directory
