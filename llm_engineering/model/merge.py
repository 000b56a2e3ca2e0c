"""Fold the trained LoRA adapter into full-precision base weights (`merge_and_unload`), and prove the merge is faithful.

A QLoRA adapter is never merged into the 4-bit model (that would re-quantize the sum). By default it is merged into the
base weights exactly as training saw them: the NF4/int8 weights dequantized (or the `dtype`-rounded weights for an
unquantized run), in fp32. `base_weights: original` merges into the untouched checkpoint weights instead.

Fidelity: on held-out prompts the unmerged adapter model and the merged model are run in fp32 over the same base
weights; the max/mean |Δlogit| and top-1 agreement are returned, and the caller fails the run above a threshold.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from llm_engineering.config import MergeConfig, ModelConfig
from llm_engineering.model.loading import DTYPES, load_model, load_tokenizer

logger = logging.getLogger(__name__)


class MergeFidelityError(RuntimeError):
    """The merged model's logits differ from the adapter model's by more than the configured threshold."""


@dataclass(frozen=True)
class FidelityReport:
    prompts: int
    tokens: int
    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    top1_agreement: float
    base_weights: str

    def metrics(self) -> dict[str, float]:
        return {f"merge_{k}": v for k, v in asdict(self).items() if isinstance(v, (int, float))}


def trained_view_weights(model_cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The base linear weights as the adapter saw them during training, in fp32 (dequantized if quantized)."""
    import bitsandbytes as bnb

    model = load_model(model_cfg)  # exactly as the training step loaded it
    weights = {}
    for name, module in model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            w = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
        elif isinstance(module, bnb.nn.Linear8bitLt):
            w = bnb.functional.int8_vectorwise_dequant(module.weight.CB, module.weight.SCB)
        elif isinstance(module, torch.nn.Linear):
            w = module.weight.data
        else:
            continue
        weights[f"{name}.weight"] = w.detach().to(device="cpu", dtype=torch.float32).clone()
    del model
    return weights


def load_fp32_base(model_cfg: ModelConfig, cfg: MergeConfig):
    model = load_model(model_cfg, quantize=False, dtype="float32")
    if cfg.base_weights == "dequantized":
        weights = trained_view_weights(model_cfg)
        params = dict(model.named_parameters())
        for name, value in weights.items():
            if name in params and params[name].shape == value.shape:
                params[name].data.copy_(value.to(params[name].device))
    return model


def merge_adapter(
    model_cfg: ModelConfig, cfg: MergeConfig, adapter_dir: Path, fidelity_rows: list[dict], output_dir: Path
) -> FidelityReport:
    """Merge in fp32, check fidelity, save the merged model (in `cfg.dtype`, safetensors) to `output_dir`."""
    from peft import PeftModel

    tokenizer = load_tokenizer(model_cfg)
    base = load_fp32_base(model_cfg, cfg)
    peft_model = PeftModel.from_pretrained(base, str(adapter_dir))
    peft_model.eval()

    tokenizer.padding_side = "right"
    texts = [tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in fidelity_rows[: cfg.fidelity_prompts]]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(base.device)
    with torch.no_grad():
        reference_logits = peft_model(**batch).logits.float()
    merged = peft_model.merge_and_unload()
    with torch.no_grad():
        merged_logits = merged(**batch).logits.float()
    mask = batch["attention_mask"].bool()
    diff = (reference_logits - merged_logits).abs()[mask]
    report = FidelityReport(
        prompts=len(texts),
        tokens=int(mask.sum()),
        max_abs_logit_diff=diff.max().item(),
        mean_abs_logit_diff=diff.mean().item(),
        top1_agreement=(reference_logits.argmax(-1) == merged_logits.argmax(-1))[mask].float().mean().item(),
        base_weights=cfg.base_weights,
    )
    if report.max_abs_logit_diff > cfg.max_logit_diff:
        raise MergeFidelityError(
            f"merged model differs from the adapter model by max |Δlogit| = {report.max_abs_logit_diff:.3g} "
            f"> merge.max_logit_diff = {cfg.max_logit_diff:g} on {report.prompts} prompts; nothing was exported"
        )
    merged = merged.to(DTYPES[cfg.dtype])
    merged.config.dtype = cfg.dtype
    merged.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    return report
