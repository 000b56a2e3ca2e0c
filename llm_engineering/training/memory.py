"""Peak memory, and an out-of-memory error that says which settings lower it."""

import contextlib

import torch

from llm_engineering.config import AdapterConfig, ModelConfig, TrainConfig


class TrainingOutOfMemory(RuntimeError):
    """Training ran out of memory; the message says which settings to change."""


@contextlib.contextmanager
def out_of_memory_advice(model_cfg: ModelConfig, adapter_cfg: AdapterConfig, cfg: TrainConfig):
    """Turn an out-of-memory error into one that names the settings that lower memory (checkpoints are kept)."""
    try:
        yield
    except (torch.cuda.OutOfMemoryError, MemoryError, RuntimeError) as exc:
        text = str(exc)
        if not isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)) and not (
                "can't allocate memory" in text or "out of memory" in text.lower()):
            raise
        device = "GPU" if isinstance(exc, torch.cuda.OutOfMemoryError) else "CPU RAM"
        batch = cfg.per_device_batch_size
        advice = []
        if batch > 1:
            advice.append(f"train.per_device_batch_size: {batch // 2} with train.gradient_accumulation_steps: "
                          f"{cfg.gradient_accumulation_steps * 2} (same effective batch)")
        advice.append(f"a smaller train.max_length (now {cfg.max_length})")
        if not adapter_cfg.gradient_checkpointing:
            advice.append("adapter.gradient_checkpointing: true")
        if model_cfg.quantization.method != "4bit":
            advice.append("model.quantization.method: 4bit (QLoRA)")
        raise TrainingOutOfMemory(
            f"training ran out of {device} ({text.splitlines()[0][:200]}). Try: " + "; ".join(advice)
            + ". Checkpoints written so far are kept: rerun to resume."
        ) from exc


def peak_memory_bytes() -> int:
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB
