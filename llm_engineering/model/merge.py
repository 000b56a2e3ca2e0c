"""Fold the trained LoRA adapter into full-precision base weights (`merge_and_unload`), and prove the merge is faithful.

A QLoRA adapter is never merged into the 4-bit model (that would re-quantize the sum). By default it is merged into the
base weights exactly as training saw them: the NF4/int8 weights dequantized (or the `dtype`-rounded weights for an
unquantized run), in fp32. `base_weights: original` merges into the untouched checkpoint weights instead.

Fidelity, on held-out prompts, twice: the unmerged adapter model and the merged model in fp32 over the same base
weights (isolates the merge: `max_logit_diff`), then the adapter model against the merged weights as they are saved
(rounded to `merge.dtype`, computed in fp32: what ships), by the mean per-token KL divergence of their next-token
distributions (`saved_max_kl`; max |Δlogit| and top-1 agreement are reported). Either one over its threshold fails
the run before anything is exported.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from llm_engineering.artifacts import first_rows
from llm_engineering.config import MergeConfig, ModelConfig
from llm_engineering.data.templates import row_text
from llm_engineering.model.precision import resolve_dtype, torch_dtype
from llm_engineering.model.adapter import attach_adapter
from llm_engineering.model.loading import load_model, load_tokenizer, padding_side, save_tokenizer
from llm_engineering.model.trained_view import trained_view

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
    comparison: str
    saved_dtype: str = "float32"
    saved_max_abs_logit_diff: float = 0.0
    saved_top1_agreement: float = 1.0
    saved_mean_kl: float = 0.0  # nats per token, the adapter model's next-token distribution vs the saved weights'

    def metrics(self) -> dict[str, float]:
        return {f"merge_{k}": v for k, v in asdict(self).items() if isinstance(v, (int, float))}


def load_fp32_base(model_cfg: ModelConfig, cfg: MergeConfig):
    """The base in fp32; with `base_weights: dequantized` its linear layers (all but the output head: what
    bitsandbytes quantizes and LoRA targets) hold the weights training saw."""
    model = load_model(model_cfg, quantize=False, dtype="float32")
    if cfg.base_weights == "dequantized":
        output = model.get_output_embeddings()
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, torch.nn.Linear) and module is not output:
                    module.weight.data = trained_view(module.weight.data, model_cfg)
    return model


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch.to(model.device)).logits.float().cpu()


def logit_agreement(reference: torch.Tensor, other: torch.Tensor, mask: torch.Tensor) -> tuple[float, float, float]:
    """max |Δlogit|, mean |Δlogit| and top-1 agreement over the unmasked positions."""
    diff = (reference - other).abs()[mask]
    top1 = (reference.argmax(-1) == other.argmax(-1))[mask].float().mean().item()
    return diff.max().item(), diff.mean().item(), top1


def per_token_kl(reference: torch.Tensor, other: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(reference || other) between next-token distributions at each unmasked position, in nats."""
    p, q = torch.log_softmax(reference, -1), torch.log_softmax(other, -1)
    return (p.exp() * (p - q)).sum(-1)[mask]


def mean_kl(reference: torch.Tensor, other: torch.Tensor, mask: torch.Tensor) -> float:
    return per_token_kl(reference, other, mask).mean().item()


def fidelity_report(reference: torch.Tensor, merged: torch.Tensor, mask: torch.Tensor, cfg: MergeConfig,
                    comparison: str, saved: torch.Tensor | None = None) -> FidelityReport:
    """Compare logits; raise MergeFidelityError above `cfg.max_logit_diff`, or above `cfg.saved_max_kl` (and
    `cfg.saved_max_logit_diff` if set) for `saved` (the logits of the weights as saved; None: saved in fp32, the
    same as `merged`)."""
    max_diff, mean_diff, top1 = logit_agreement(reference, merged, mask)
    shipped = merged if saved is None else saved
    saved_max, _, saved_top1 = (max_diff, mean_diff, top1) if saved is None else logit_agreement(reference, saved, mask)
    saved_kl = mean_kl(reference, shipped, mask)
    report = FidelityReport(
        prompts=int(mask.shape[0]), tokens=int(mask.sum()), max_abs_logit_diff=max_diff, mean_abs_logit_diff=mean_diff,
        top1_agreement=top1, base_weights=cfg.base_weights, comparison=comparison,
        saved_dtype=resolve_dtype(cfg.dtype), saved_max_abs_logit_diff=saved_max, saved_top1_agreement=saved_top1,
        saved_mean_kl=saved_kl,
    )
    where = f"on {report.prompts} prompts ({comparison}); nothing was exported"
    if report.max_abs_logit_diff > cfg.max_logit_diff:
        raise MergeFidelityError(
            f"merged model differs from the adapter model by max |Δlogit| = {report.max_abs_logit_diff:.3g} "
            f"> merge.max_logit_diff = {cfg.max_logit_diff:g} {where}")
    measured = f"(max |Δlogit| {saved_max:.3g}, top-1 agreement {saved_top1:.3f}, mean KL {saved_kl:.3g} nats)"
    if saved_kl > cfg.saved_max_kl:
        raise MergeFidelityError(
            f"merged weights as saved in {report.saved_dtype} differ from the adapter model by a mean per-token KL "
            f"divergence of {saved_kl:.3g} nats > merge.saved_max_kl = {cfg.saved_max_kl:g} {measured} {where}; "
            "correct merges saved in bf16 measured 3.2e-4 at most. Either the merge is wrong (applied twice, a layer "
            "left out) or the saved dtype cannot hold the update (an unquantized bf16 base with a small learning "
            "rate: its changes round away): save in float32 (merge.dtype: float32)")
    if cfg.saved_max_logit_diff is not None and saved_max > cfg.saved_max_logit_diff:
        raise MergeFidelityError(
            f"merged weights as saved in {report.saved_dtype} differ from the adapter model by max |Δlogit| = "
            f"{saved_max:.3g} > merge.saved_max_logit_diff = {cfg.saved_max_logit_diff:g} {measured} {where}; "
            "save in float32 (merge.dtype) or raise the threshold")
    return report


def merge_adapter(
    model_cfg: ModelConfig, cfg: MergeConfig, adapter_dir: Path, fidelity_rows: list[dict], output_dir: Path
) -> FidelityReport:
    """Merge, check fidelity, save the merged model (in `cfg.dtype`, safetensors) with its tokenizer to `output_dir`."""
    tokenizer = load_tokenizer(model_cfg)
    rows = first_rows(fidelity_rows, cfg.fidelity_prompts)  # a list or the step's datasets.Dataset
    texts = [row_text(tokenizer, r) for r in rows]
    with padding_side(tokenizer, "right"):
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    mask = batch["attention_mask"].bool()
    merge = _merge_streamed if cfg.method == "streamed" else _merge_in_memory
    report = merge(model_cfg, cfg, adapter_dir, batch, mask, output_dir)
    save_tokenizer(tokenizer, output_dir)
    return report


def _merge_in_memory(model_cfg, cfg, adapter_dir, batch, mask, output_dir) -> FidelityReport:
    """merge_and_unload on the fp32 base; fidelity: the same fp32 weights unmerged vs merged (isolates the merge)."""
    peft_model = attach_adapter(load_fp32_base(model_cfg, cfg), adapter_dir)
    peft_model.eval()
    reference = _logits(peft_model, batch)
    merged = peft_model.merge_and_unload()
    merged_logits = _logits(merged, batch)
    saved_logits = None
    if torch_dtype(cfg.dtype) != torch.float32:  # what ships: weights rounded to the saved dtype (exact round trip)
        saved_logits = _logits(merged.to(torch_dtype(cfg.dtype)).float(), batch)
    report = fidelity_report(reference, merged_logits, mask, cfg, "fp32 adapter model vs fp32 merged model",
                             saved=saved_logits)
    merged = merged.to(torch_dtype(cfg.dtype))
    merged.config.dtype = resolve_dtype(cfg.dtype)
    merged.save_pretrained(output_dir, safe_serialization=True)
    return report


def _merge_streamed(model_cfg, cfg, adapter_dir, batch, mask, output_dir) -> FidelityReport:
    """Shard-by-shard merge; fidelity: the model as trained (quantized base + adapter) vs the merged checkpoint in
    `cfg.dtype`, one model in memory at a time. This includes quantization and dtype rounding: set the threshold
    accordingly."""
    from transformers import AutoModelForCausalLM

    from llm_engineering.model.streamed_merge import streamed_merge

    trained = attach_adapter(load_model(model_cfg), adapter_dir)
    trained.eval()
    reference = _logits(trained, batch)
    del trained
    streamed_merge(model_cfg, cfg, adapter_dir, output_dir)
    merged = AutoModelForCausalLM.from_pretrained(output_dir, dtype=torch_dtype(cfg.dtype), use_safetensors=True)
    try:
        return fidelity_report(reference, _logits(merged, batch), mask, cfg,
                               f"model as trained vs merged checkpoint in {cfg.dtype}")
    except MergeFidelityError:
        for file in output_dir.iterdir():
            file.unlink()
        raise
