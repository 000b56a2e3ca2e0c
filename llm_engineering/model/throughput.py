"""Training throughput in hardware terms: model FLOPs per token, a measured matmul peak, and their ratio (MFU).

LoRA training runs the frozen weights' forward (2·N FLOPs per token) and input-gradient backward (2·N); their
weight gradients are never computed, so model FLOPs are 4·N per token, N counting every parameter of the
unquantized model (embeddings included: tied or not, the LM head multiplies by them). Adapter and attention-score
FLOPs are left out, as in the usual 6·N convention for full fine-tuning.
"""

from __future__ import annotations

import time

import torch

LORA_FLOPS_PER_PARAM = 4


def parameter_count(config) -> int:
    """N of the unquantized model (4-bit weights are packed two per byte, so counting loaded tensors would halve N)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def matmul_peak_gflops(dtype: torch.dtype, sizes: tuple[int, ...] = (), trials: int = 3) -> float:
    """Best GFLOP/s of square matmuls on this device (the best of `trials` timings of each size)."""
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    best = 0.0
    for n in sizes or ((4096, 8192) if cuda else (1024, 2048)):
        a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
        repeats = max(3, int(2e11 / (2 * n**3))) if cuda else 4
        for _ in range(2):
            a @ b
        for _ in range(trials):  # the peak, not a noisy neighbour's share of it
            sync()
            start = time.perf_counter()
            for _ in range(repeats):
                a @ b
            sync()
            best = max(best, 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9)
    return best


def model_tflops(tokens_per_second: float, n_params: int) -> float:
    return LORA_FLOPS_PER_PARAM * n_params * tokens_per_second / 1e12
