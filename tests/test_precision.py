"""`auto` dtypes: bfloat16 only where the hardware computes it natively, float32 elsewhere (where bf16 training ran
about 8x slower per step on this project's CPU machines without AVX-512 BF16)."""

import pytest
import torch

from llm_engineering.config import ModelConfig, TrainConfig
from llm_engineering.model import precision
from llm_engineering.training import arguments


@pytest.mark.parametrize("native, expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_follows_the_hardware_and_explicit_dtypes_stay(monkeypatch, native, expected):
    monkeypatch.setattr(precision, "fast_bf16", lambda: native)
    monkeypatch.setattr(arguments, "fast_bf16", lambda: native)
    assert precision.torch_dtype("auto") == expected
    assert precision.torch_dtype("bfloat16") == torch.bfloat16 and precision.torch_dtype("float32") == torch.float32
    if not torch.cuda.is_available():
        assert arguments.mixed_precision(TrainConfig(), ModelConfig()) == (native, False)
        assert arguments.mixed_precision(TrainConfig(mixed_precision="bf16"), ModelConfig()) == (True, False)


def test_cpu_detection_reads_the_cpu_flags():
    precision.fast_bf16.cache_clear()
    flags = open("/proc/cpuinfo").read()
    if not torch.cuda.is_available():
        assert precision.fast_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)
