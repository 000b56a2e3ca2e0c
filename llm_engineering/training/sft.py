"""Supervised fine-tuning of the LoRA adapter with TRL's SFTTrainer.

Rows arrive tokenized and masked by the dataset step (`input_ids`, `labels`: the assistant turns and their end-of-turn
token are trained), so the model learns to stop even where pad == eos: padding is masked by the attention mask, not by
token id. With `train.packing`, TRL packs rows best-fit into `max_length` sequences and collate.py keeps every row
from attending to the others.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from llm_engineering.config import AdapterConfig, ModelConfig, TrainConfig
from llm_engineering.data.stats import list_lengths, padding_fraction
from llm_engineering.model.adapter import (attach_adapter, inject_adapter, prepare_for_training, reinitialises_base,
                                           save_adapter)
from llm_engineering.model.loading import check_attention_backend, load_model, load_tokenizer
from llm_engineering.training.arguments import common_trainer_arguments, mixed_precision
from llm_engineering.training.context import packed_collator, training_context
from llm_engineering.training.memory import out_of_memory_advice, peak_memory_bytes
from llm_engineering.training.progress import use_console_progress
from llm_engineering.training.resume import checkpoint_step, last_checkpoint
from llm_engineering.training.throughput import matmul_peak_gflops, model_tflops, parameter_count

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    adapter_dir: Path
    first_train_loss: float
    final_train_loss: float
    eval_loss: Optional[float]
    steps: int
    train_seconds: float
    train_tokens: int
    tokens_per_second: float
    peak_memory_bytes: int
    padding_fraction: float = 0.0  # of the token slots in shuffled, padded training batches
    model_tflops: float = 0.0  # 4·N·tokens/s (throughput.py)
    matmul_peak_gflops: float = 0.0  # measured on this machine, in the compute dtype
    resumed_from_step: int = 0
    world_size: int = 1  # data-parallel processes that trained it (tokens and throughput are their sum)
    log_history: list[dict] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        metrics = {
            "train_loss_first": self.first_train_loss,
            "train_loss_final": self.final_train_loss,
            "train_steps": self.steps,
            "train_seconds": self.train_seconds,
            "train_tokens": self.train_tokens,
            "train_tokens_per_second": self.tokens_per_second,
            "train_peak_memory_gib": self.peak_memory_bytes / 2**30,
            "train_resumed_from_step": self.resumed_from_step,
            "train_world_size": self.world_size,
            "train_padding_fraction": self.padding_fraction,
            "train_model_tflops": self.model_tflops,
            "train_matmul_peak_gflops": self.matmul_peak_gflops,
            "train_mfu": self.model_tflops * 1e3 / self.matmul_peak_gflops if self.matmul_peak_gflops else 0.0,
        }
        if self.eval_loss is not None:
            metrics["eval_loss"] = self.eval_loss
            metrics["eval_perplexity"] = math.exp(min(self.eval_loss, 50.0))
        return metrics


def sft_config(cfg: TrainConfig, adapter_cfg: AdapterConfig, model_cfg: ModelConfig, output_dir: str):
    from trl import SFTConfig

    return SFTConfig(
        **common_trainer_arguments(cfg, adapter_cfg, model_cfg, output_dir),
        include_num_input_tokens_seen="non_padding",
        dataset_kwargs={"skip_prepare_dataset": True},  # the dataset step already tokenized, masked and fitted
    )


def build_trainer(model, tokenizer, model_cfg, adapter_cfg, cfg, train_rows, eval_rows, output_dir, callbacks=None):
    """TRL SFTTrainer over rows the dataset step already templated, tokenized and masked."""
    from trl import pack_dataset

    from llm_engineering.training.sft_trainers import PackedTokensSFTTrainer, TrainedPositionsSFTTrainer

    trainer_class = TrainedPositionsSFTTrainer if trained_positions_loss(cfg) else PackedTokensSFTTrainer
    train = token_dataset(train_rows)
    if cfg.packing:  # packed once here, shuffled first so that each sequence mixes rows from the whole dataset
        train = pack_dataset(train.shuffle(seed=cfg.seed), cfg.max_length, strategy="bfd")
    trainer = trainer_class(
        model=model,
        args=sft_config(cfg, adapter_cfg, model_cfg, str(output_dir)),
        train_dataset=train,
        eval_dataset=token_dataset(eval_rows),
        processing_class=tokenizer,
        data_collator=packed_collator(tokenizer, cfg, model_cfg),
        callbacks=callbacks,
    )
    if cfg.adapter_dtype == "float32":  # undo TRL's bf16 cast of a quantized model's adapter (before the optimizer)
        for param in trainer.model.parameters():
            if param.requires_grad and param.dtype in (torch.bfloat16, torch.float16):
                param.data = param.data.float()
    use_console_progress(trainer)
    return trainer


def token_dataset(rows):
    """The trainer's columns, from the dataset step's `datasets.Dataset` (no copy) or from a list of rows."""
    from datasets import Dataset

    if isinstance(rows, Dataset):
        return rows.select_columns(["input_ids", "labels"])
    return Dataset.from_dict({"input_ids": [r["input_ids"] for r in rows], "labels": [r["labels"] for r in rows]})


def trained_positions_loss(cfg: TrainConfig) -> bool:
    if cfg.lm_head_loss == "auto":
        return not torch.cuda.is_available()
    return cfg.lm_head_loss == "trained_positions"


def train_adapter(
    model_cfg: ModelConfig,
    adapter_cfg: AdapterConfig,
    cfg: TrainConfig,
    initial_adapter: Path,
    train_rows,  # list of rows or the dataset step's datasets.Dataset
    eval_rows,
    output_dir: Path,
    callbacks: Optional[list] = None,
    checkpoint_dir: Optional[Path] = None,
) -> TrainResult:
    """Load the base as configured, attach the initial adapter, train it, save the trained adapter in `output_dir`.

    With `cfg.checkpoint_steps` and a durable `checkpoint_dir`, checkpoints go there and a rerun after a kill resumes
    from the last one (the directory is removed once training completes)."""
    mixed_precision(cfg, model_cfg)  # refuse an impossible precision before loading anything
    check_attention_backend(model_cfg)
    tokenizer = load_tokenizer(model_cfg)
    if reinitialises_base(adapter_cfg):  # PiSSA: rebuild residual base + adapter here, check it is the same init
        model, _ = inject_adapter(load_model(model_cfg), adapter_cfg)
        check_same_init(model, initial_adapter)
    else:
        model = prepare_for_training(load_model(model_cfg), adapter_cfg)
        model = attach_adapter(model, initial_adapter, is_trainable=True)

    with tempfile.TemporaryDirectory(prefix="sft-") as scratch:
        work_dir = checkpoint_dir if (checkpoint_dir and cfg.checkpoint_steps) else Path(scratch)
        resume = last_checkpoint(work_dir)
        if resume:
            logger.warning("Resuming training from %s (step %d of %s)", resume, checkpoint_step(resume), cfg.max_steps)
        trainer = build_trainer(model, tokenizer, model_cfg, adapter_cfg, cfg, train_rows, eval_rows, work_dir,
                                callbacks)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        with out_of_memory_advice(model_cfg, adapter_cfg, cfg), training_context(model, cfg, model_cfg):
            trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        seconds = time.perf_counter() - start
        evals = [e for e in trainer.state.log_history if "eval_loss" in e]
        final_eval_done = bool(evals) and evals[-1].get("step") == trainer.state.global_step
        eval_metrics = evals[-1] if final_eval_done else trainer.evaluate()

        if trainer.is_world_process_zero():  # data parallel: every rank holds the same adapter; one writes it
            save_adapter(trainer.model, output_dir, initial_adapter if reinitialises_base(adapter_cfg) else None)
            if work_dir != Path(scratch):
                shutil.rmtree(work_dir, ignore_errors=True)  # done: the trained adapter is the durable result now
        trainer.accelerator.wait_for_everyone()
    history = trainer.state.log_history
    train_losses = [entry["loss"] for entry in history if "loss" in entry]
    tokens = int(trainer.state.num_input_tokens_seen)
    tokens_per_second = tokens / seconds if seconds else 0.0
    bf16_compute = mixed_precision(cfg, model_cfg)[0] or model.dtype == torch.bfloat16
    compute_dtype = torch.bfloat16 if bf16_compute else torch.float32
    return TrainResult(
        adapter_dir=output_dir,
        first_train_loss=float(train_losses[0]) if train_losses else float("nan"),
        final_train_loss=float(train_losses[-1]) if train_losses else float("nan"),
        eval_loss=eval_metrics.get("eval_loss"),
        steps=trainer.state.global_step,
        train_seconds=round(seconds, 3),
        train_tokens=tokens,
        tokens_per_second=tokens_per_second,
        model_tflops=model_tflops(tokens_per_second, parameter_count(trainer.model.get_base_model().config)),
        matmul_peak_gflops=matmul_peak_gflops(compute_dtype, sizes=(8192,) if torch.cuda.is_available() else (2048,)),
        peak_memory_bytes=peak_memory_bytes(),
        padding_fraction=padding_fraction(list_lengths(trainer.train_dataset), cfg.per_device_batch_size, cfg.seed),
        resumed_from_step=checkpoint_step(resume) if resume else 0,
        world_size=trainer.args.world_size,
        log_history=history,
    )


def check_same_init(peft_model, initial_adapter: Path) -> None:
    """The re-run initialisation must equal the one the inject step saved (same weights, same seed)."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    saved = load_file(Path(initial_adapter) / "adapter_model.safetensors")
    rebuilt = get_peft_model_state_dict(peft_model)
    for key, value in saved.items():
        if not torch.allclose(rebuilt[key].float().cpu(), value.float(), atol=1e-5):
            raise RuntimeError(f"re-initialised adapter differs from the inject step's at {key}")


