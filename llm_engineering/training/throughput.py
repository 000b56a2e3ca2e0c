"""Training throughput in hardware terms: model FLOPs per token, a measured matmul peak, and their ratio (MFU).

LoRA training runs the frozen weights' forward (2·N FLOPs per token) and input-gradient backward (2·N); their
weight gradients are never computed, so model FLOPs are 4·N per token, N counting every parameter of the
unquantized model (embeddings included: tied or not, the LM head multiplies by them). Adapter and attention-score
FLOPs are left out, as in the usual 6·N convention for full fine-tuning.
"""

from __future__ import annotations

import functools
import time

import torch

LORA_FLOPS_PER_PARAM = 4


def parameter_count(config) -> int:
    """N of the unquantized model (4-bit weights are packed two per byte, so counting loaded tensors would halve N)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


@functools.lru_cache(maxsize=None)  # the machine's peak does not change within a process
def matmul_peak_gflops(dtype: torch.dtype, sizes: tuple[int, ...] = (), trials: int = 3,
                       budget_s: float = 2.0) -> float:
    """Best GFLOP/s of square matmuls on this device (the best of `trials` timings of each size), in about
    `budget_s`. A 256² probe first says how fast products are here; a size whose repeats would not fit is halved
    until they do: on a CPU without native bf16 (AMD EPYC without AVX-512 BF16) one 2048² bf16 product took 48 s,
    and the fixed repeat count made this measurement take minutes per training run."""
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def timed(n: int, repeats: int) -> float:
        a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
        a @ b  # warm-up
        best = 0.0
        for _ in range(trials):  # the peak, not a noisy neighbour's share of it
            sync()
            start = time.perf_counter()
            for _ in range(repeats):
                a @ b
            sync()
            best = max(best, 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9)
        return best

    probe = timed(256, 1)
    best = probe
    for n in sizes or ((4096, 8192) if cuda else (1024, 2048)):
        repeats = max(3, int(2e11 / (2 * n**3))) if cuda else 4
        while n > 256 and (trials * repeats + 1) * 2 * n**3 / (probe * 1e9) > budget_s:
            n //= 2
        best = max(best, timed(n, repeats))
    return best


def model_tflops(tokens_per_second: float, n_params: int) -> float:
    return LORA_FLOPS_PER_PARAM * n_params * tokens_per_second / 1e12
