"""The TrainingArguments every trainer here shares (SFT, DPO, ORPO), and the precision they train in."""

import torch

from llm_engineering.config import AdapterConfig, ModelConfig, TrainConfig
from llm_engineering.model.precision import fast_bf16


def mixed_precision(cfg: TrainConfig, model_cfg: ModelConfig) -> tuple[bool, bool]:
    """(bf16, fp16) for the Trainer. "auto": bf16 where the hardware computes it natively (CUDA bf16, CPUs with
    AVX-512 BF16 / AMX), fp16 on older GPUs, fp32 on other CPUs (where bf16 autocast is several times slower)."""
    if cfg.mixed_precision == "auto":
        if torch.cuda.is_available():
            return (torch.cuda.is_bf16_supported(), not torch.cuda.is_bf16_supported())
        return (fast_bf16(), False)
    if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
        # accelerate silently skips fp16 autocast on CPU: refuse rather than train in a precision nobody asked for
        raise ValueError("train.mixed_precision=fp16 needs a GPU (on CPU it would silently run in fp32); "
                         "use bf16, auto or no on CPU")
    return (cfg.mixed_precision == "bf16", cfg.mixed_precision == "fp16")


def checkpointing_argument() -> str:
    """transformers 5.2x renamed gradient_checkpointing (now a deprecated alias that warns) to activation_checkpointing."""
    from transformers import TrainingArguments

    fields = TrainingArguments.__dataclass_fields__
    return "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"


def common_trainer_arguments(cfg: TrainConfig, adapter_cfg: AdapterConfig, model_cfg: ModelConfig,
                             output_dir: str) -> dict:
    """The TrainingArguments every trainer here shares (SFT, DPO, ORPO), from the train section."""
    bf16, fp16 = mixed_precision(cfg, model_cfg)
    return dict(
        output_dir=output_dir,
        max_steps=cfg.max_steps or -1,  # -1: transformers' "use num_train_epochs"
        num_train_epochs=cfg.num_epochs,
        per_device_train_batch_size=cfg.per_device_batch_size,
        per_device_eval_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float < 1 is a ratio of max_steps
        weight_decay=cfg.weight_decay,
        max_length=cfg.max_length,
        logging_steps=cfg.logging_steps,
        eval_strategy="steps",
        eval_steps=cfg.eval_steps,
        save_strategy="steps" if cfg.checkpoint_steps else "no",
        save_steps=cfg.checkpoint_steps or 500,
        save_total_limit=2,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=bf16,
        fp16=fp16,
        use_cpu=not torch.cuda.is_available(),
        **{checkpointing_argument(): adapter_cfg.gradient_checkpointing},
        report_to=[],  # metrics reach MLflow through the callbacks the caller passes
        disable_tqdm=True,
    )
