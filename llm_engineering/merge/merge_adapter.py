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
from pathlib import Path

import torch

from llm_engineering.artifacts import first_rows
from llm_engineering.config import MergeConfig, ModelConfig
from llm_engineering.data.templates import row_text
from llm_engineering.merge.fidelity import FidelityReport, MergeFidelityError, fidelity_report, logits_of
from llm_engineering.merge.trained_view import trained_view
from llm_engineering.model.adapter import attach_adapter
from llm_engineering.model.loading import load_model, load_tokenizer, padding_side, save_tokenizer
from llm_engineering.model.precision import resolve_dtype, torch_dtype

logger = logging.getLogger(__name__)


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
    reference = logits_of(peft_model, batch)
    merged = peft_model.merge_and_unload()
    merged_logits = logits_of(merged, batch)
    saved_logits = None
    if torch_dtype(cfg.dtype) != torch.float32:  # what ships: weights rounded to the saved dtype (exact round trip)
        saved_logits = logits_of(merged.to(torch_dtype(cfg.dtype)).float(), batch)
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

    from llm_engineering.merge.streamed import streamed_merge

    trained = attach_adapter(load_model(model_cfg), adapter_dir)
    trained.eval()
    reference = logits_of(trained, batch)
    del trained
    streamed_merge(model_cfg, cfg, adapter_dir, output_dir)
    merged = AutoModelForCausalLM.from_pretrained(output_dir, dtype=torch_dtype(cfg.dtype), use_safetensors=True)
    try:
        return fidelity_report(reference, logits_of(merged, batch), mask, cfg,
                               f"model as trained vs merged checkpoint in {cfg.dtype}")
    except MergeFidelityError:
        for file in output_dir.iterdir():
            file.unlink()
        raise
