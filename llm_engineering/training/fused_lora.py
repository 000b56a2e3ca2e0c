"""A fused LoRA linear for training: the frozen base matmul and the low-rank update in one autograd node.

PEFT runs a LoRA layer as the base layer (for QLoRA: bitsandbytes' 4-bit matmul), a defensive clone of its output,
lora_A, lora_B, a scaling multiply and an add, with autocast casting the fp32 adapter weights on every call: about
ten autograd nodes and several full-size elementwise passes per layer, 210 layers for SmolLM2 with all-linear
targets. Here the forward is `addmm(x W^T, x A^T, B^T, alpha=scale)` on a weight dequantized once, and the backward
is written out (unsloth's fast LoRA does the same with Triton kernels on CUDA; this uses plain torch ops, so it runs
on CPU and CUDA alike):

    dB = scale * g^T (x A^T)        dA = scale * (g B)^T x        dx = g W + scale * (g B) A

The frozen weight is dequantized again in the backward instead of being kept (QLoRA's memory point). Layers this does
not cover (DoRA and other variants, a trained base bias, several active adapters, 8-bit bases) keep PEFT's forward.
With LoRA dropout the branch's input is dropped out first, as PEFT does, and its gradient returned separately.
"""

from __future__ import annotations

import contextlib
import logging
import types
from typing import Iterator, Optional

import torch

logger = logging.getLogger(__name__)


def dense_weight(base: torch.nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """The base layer's frozen weight [out, in] in `dtype` (dequantized from 4-bit where it is stored so)."""
    if getattr(base.weight, "quant_state", None) is None:
        return base.weight.to(dtype)
    import bitsandbytes.functional as bnb_functional

    from llm_engineering.model.bnb_cpu import unpack

    unpack(base)  # an eval pass may have repacked it for CPU inference; dequantize reads the plain layout
    return bnb_functional.dequantize_4bit(base.weight.data, base.weight.quant_state).to(dtype)


class _FusedLoraLinear(torch.autograd.Function):
    """`x_lora` is the LoRA branch's input when dropout makes it differ from `x`, else None (one addmm for both)."""

    @staticmethod
    def forward(ctx, x, x_lora, lora_a, lora_b, base, scale, dtype):
        with torch.autocast(x.device.type, enabled=False):  # dtypes are explicit here
            flat = x.reshape(-1, x.shape[-1]).to(dtype)
            flat_lora = flat if x_lora is None else x_lora.reshape(-1, x.shape[-1]).to(dtype)
            a, b = lora_a.to(dtype), lora_b.to(dtype)
            down = flat_lora @ a.t()  # [tokens, r]
            # in place: an out-of-place addmm would first copy the base product into a new tensor
            out = (flat @ dense_weight(base, dtype).t()).addmm_(down, b.t(), alpha=scale)
            if base.bias is not None:
                out = out + base.bias.to(dtype)
        ctx.save_for_backward(flat_lora, down, a, b)
        ctx.base, ctx.scale, ctx.dtype, ctx.input_shape, ctx.input_dtype = base, scale, dtype, x.shape, x.dtype
        ctx.weight_dtypes, ctx.separate = (lora_a.dtype, lora_b.dtype), x_lora is not None
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        flat_lora, down, a, b = ctx.saved_tensors
        with torch.autocast(grad.device.type, enabled=False):
            g = grad.reshape(-1, grad.shape[-1]).to(ctx.dtype)
            g_b = g @ b  # [tokens, r]
            grad_a = torch.mm(g_b.t(), flat_lora).mul_(ctx.scale).to(ctx.weight_dtypes[0])
            grad_b = torch.mm(g.t(), down).mul_(ctx.scale).to(ctx.weight_dtypes[1])
            grad_x = grad_x_lora = None
            if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
                through_base = g @ dense_weight(ctx.base, ctx.dtype)
                if ctx.separate:  # dropout sits between x and the LoRA branch: autograd adds the two
                    grad_x = through_base.view(ctx.input_shape).to(ctx.input_dtype)
                    grad_x_lora = (g_b @ a).mul_(ctx.scale).view(ctx.input_shape).to(ctx.input_dtype)
                else:
                    grad_x = through_base.addmm_(g_b, a, alpha=ctx.scale).view(ctx.input_shape).to(ctx.input_dtype)
        return grad_x, grad_x_lora, grad_a, grad_b, None, None, None


def _fused_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    adapter = self.active_adapters[0]
    if args or kwargs or self.disable_adapters or self.merged or adapter not in self.lora_A:
        return type(self).forward(self, x, *args, **kwargs)  # PEFT's own path for anything unusual
    dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
    dropout = self.lora_dropout[adapter]
    x_lora = dropout(x) if self.training and not isinstance(dropout, torch.nn.Identity) else None
    return _FusedLoraLinear.apply(x, x_lora, self.lora_A[adapter].weight, self.lora_B[adapter].weight,
                                  self.get_base_layer(), self.scaling[adapter], dtype)


def fusable(module: torch.nn.Module) -> Optional[str]:
    """None if `module` can take the fused forward, else why not."""
    from peft.tuners.lora import LoraLayer

    if not isinstance(module, LoraLayer) or not hasattr(module, "lora_A"):
        return "not a LoRA layer"
    base = module.get_base_layer()
    if type(base).__name__ not in ("Linear", "Linear4bit") or getattr(module, "fan_in_fan_out", False):
        return f"base layer {type(base).__name__}"
    if base.bias is not None and base.bias.requires_grad:
        return "a trained base bias"
    if len(module.active_adapters) != 1:
        return "several active adapters"
    adapter = module.active_adapters[0]
    if adapter in getattr(module, "lora_variant", {}):
        return "a LoRA variant (DoRA, ...)"
    if not isinstance(module.lora_dropout[adapter], (torch.nn.Identity, torch.nn.Dropout)):
        return f"LoRA dropout {type(module.lora_dropout[adapter]).__name__}"
    return None


@contextlib.contextmanager
def fused_lora(model: torch.nn.Module) -> Iterator[int]:
    """Give every fusable LoRA linear of `model` the fused forward for the duration; yields how many it changed."""
    from peft.tuners.lora import LoraLayer

    changed, skipped = [], {}
    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        reason = fusable(module)
        if reason is None:
            module.forward = types.MethodType(_fused_forward, module)
            changed.append(module)
        else:
            skipped[reason] = skipped.get(reason, 0) + 1
    if skipped:
        logger.info("fused LoRA: %d layers fused, kept PEFT's forward for %s", len(changed), skipped)
    try:
        yield len(changed)
    finally:
        for module in changed:
            del module.forward
