"""Keep bitsandbytes' 4-bit weights in their trainable layout on CPU while a model trains.

bitsandbytes 0.50 repacks a `Linear4bit` weight into an AVX512-BF16 inference layout the first time the layer runs in
eval mode on an input without gradients, and from then on computes it with `gemv_4bit`, which passes no gradient to
the layer's input. A mid-training evaluation (the Trainer's `eval_steps`) does exactly that, so every later step
trains the adapters below the top layer on almost no gradient: measured on SmolLM2-135M, the first layer's LoRA
gradient norm fell from 1.0e-2 to 1.4e-5 after one eval pass. While training, this keeps the weights unpacked.
"""

from __future__ import annotations

import contextlib
from typing import Iterator


def _packed(module) -> bool:
    state = getattr(module.weight, "quant_state", None)
    return bool(getattr(state, "packing_format_for_cpu", False))


def unpack(module) -> None:
    """Back to the layout bitsandbytes' dequantize and training matmul read."""
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

    if _packed(module):
        module.weight.data, module.weight.quant_state = _convert_weight_packed_for_cpu_inverse(
            module.weight.data, module.weight.quant_state)


@contextlib.contextmanager
def trainable_4bit_layout(model) -> Iterator[int]:
    """No CPU inference repacking of `model`'s 4-bit layers for the duration (weights already packed are unpacked);
    yields how many layers it covers. Inference after it may repack them again."""
    layers = [m for m in model.modules() if hasattr(m, "support_avx512bf16_for_cpu")]
    saved = [m.support_avx512bf16_for_cpu for m in layers]
    for module in layers:
        unpack(module)
        module.support_avx512bf16_for_cpu = False
    try:
        yield len(layers)
    finally:
        for module, flag in zip(layers, saved):
            module.support_avx512bf16_for_cpu = flag
