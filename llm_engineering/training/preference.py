"""Preference tuning of the LoRA adapter with TRL: DPO (DPOTrainer), ORPO (TRL's experimental ORPOTrainer), or GRPO
(GRPOTrainer: completions sampled per prompt, scored by reward functions against the pair's chosen answer).

The starting adapter (a fresh one, or the SFT run's trained adapter) is loaded trainable. For DPO, TRL copies it into a
frozen "ref" adapter on the same model and computes the reference log-probabilities through it, so the reference is the
starting adapter and no second model is loaded. ORPO has no reference: it adds an odds-ratio term to the chosen
response's NLL. GRPO's reference is the start adapter too (TRL's "ref" copy, used when `beta` > 0). Rows arrive validated by the dataset step (`prompt`, `chosen`, `rejected` as chat messages); the
trainer templates and tokenizes them as the dataset step measured them (tested).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from llm_engineering.config import AdapterConfig, ModelConfig, PreferenceConfig, TrainConfig
from llm_engineering.model.adapter import attach_adapter, prepare_for_training, save_adapter
from llm_engineering.model.loading import check_attention_backend, load_model, load_tokenizer
from llm_engineering.training.arguments import common_trainer_arguments, mixed_precision
from llm_engineering.training.heap import heap_kept
from llm_engineering.training.memory import out_of_memory_advice, peak_memory_bytes
from llm_engineering.training.progress import use_console_progress
from llm_engineering.training.resume import checkpoint_step, last_checkpoint
from llm_engineering.training.rewards import SampledCompletions, completion_text, reward_functions, reward_weights

logger = logging.getLogger(__name__)
PAIR_COLUMNS = ("prompt", "chosen", "rejected")
REWARD_KEYS = ("rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected")


@dataclass
class PreferenceResult:
    adapter_dir: Path
    method: str
    steps: int
    train_seconds: float
    first_train_loss: float
    final_train_loss: float
    eval: dict[str, float]  # the last evaluation on the held-out pairs: eval_loss, eval_rewards/accuracies, ...
    peak_memory_bytes: int
    resumed_from_step: int = 0
    log_history: list[dict] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)  # grpo: sampled completions and their rewards (a table)

    def metrics(self) -> dict[str, float]:
        metrics = {
            "pref_train_loss_first": self.first_train_loss,
            "pref_train_loss_final": self.final_train_loss,
            "pref_steps": self.steps,
            "pref_train_seconds": self.train_seconds,
            "pref_peak_memory_gib": self.peak_memory_bytes / 2**30,
            "pref_resumed_from_step": self.resumed_from_step,
        }
        rewards = [entry["reward"] for entry in self.log_history if "reward" in entry]
        if rewards:  # grpo: the summed reward of the sampled completions, where the curve starts and ends
            metrics.update(pref_reward_first=float(rewards[0]), pref_reward_final=float(rewards[-1]))
        for key in REWARD_KEYS:
            if f"eval_{key}" in self.eval:
                metrics[f"pref_eval_reward_{key.split('/')[1]}"] = float(self.eval[f"eval_{key}"])
        if "eval_loss" in self.eval:
            metrics["pref_eval_loss"] = float(self.eval["eval_loss"])
        return metrics


def trainer_arguments(pref: PreferenceConfig, cfg: TrainConfig, adapter_cfg: AdapterConfig, model_cfg: ModelConfig,
                      output_dir: str):
    """TRL's DPOConfig, ORPOConfig or GRPOConfig from the preference and train sections."""
    common = dict(common_trainer_arguments(cfg, adapter_cfg, model_cfg, output_dir), beta=pref.beta)
    if pref.method == "grpo":
        from trl import GRPOConfig

        del common["max_length"]  # GRPO's lengths: the prompt as the dataset step accepted it, + max_completion_length
        # evaluation would sample completions again: the pipeline's evaluate steps score the tuned model instead
        return GRPOConfig(**{**common, "eval_strategy": "no"}, num_generations=pref.num_generations,
                          max_completion_length=pref.max_completion_length, temperature=pref.temperature,
                          reward_weights=[r.weight for r in pref.rewards], remove_unused_columns=False,
                          log_completions=False)
    if pref.method == "orpo":
        from trl.experimental.orpo import ORPOConfig

        # its collator needs the pair columns; left on, TRL turns it off itself and says so on the console
        return ORPOConfig(**common, remove_unused_columns=False)
    from trl import DPOConfig

    losses = {pref.loss_type: 1.0, **({"sft": pref.sft_loss_weight} if pref.sft_loss_weight else {})}
    return DPOConfig(**common, loss_type=list(losses), loss_weights=list(losses.values()),
                     label_smoothing=pref.label_smoothing)


def pair_dataset(rows):
    """The trainer's columns only: prompt, chosen, rejected (a datasets.Dataset, or a list of rows)."""
    from datasets import Dataset

    if isinstance(rows, list):
        return Dataset.from_list([{k: row[k] for k in PAIR_COLUMNS} for row in rows])
    return rows.select_columns(list(PAIR_COLUMNS))


def prompt_dataset(rows):
    """GRPO's rows: each pair's prompt, and its chosen answer's text as the `reference` the rewards compare with
    (a datasets.Dataset, mapped in batches rather than copied into Python objects; or a list of rows)."""
    pairs = pair_dataset(rows)
    return pairs.map(lambda batch: {"reference": [completion_text(c) for c in batch["chosen"]]}, batched=True,
                     remove_columns=["chosen", "rejected"])


def build_trainer(model, tokenizer, pref: PreferenceConfig, args, train_rows, eval_rows, callbacks=None,
                  samples: Optional[SampledCompletions] = None):
    if pref.method == "grpo":
        from trl import GRPOTrainer

        return GRPOTrainer(model=model, reward_funcs=reward_functions(pref, samples), args=args,
                           train_dataset=prompt_dataset(train_rows), processing_class=tokenizer, callbacks=callbacks)
    if pref.method == "orpo":
        from trl.experimental.orpo import ORPOTrainer as Trainer
    else:
        from trl import DPOTrainer as Trainer
    return Trainer(model=model, args=args, train_dataset=pair_dataset(train_rows), eval_dataset=pair_dataset(eval_rows),
                   processing_class=tokenizer, callbacks=callbacks)


def final_evaluation(trainer, pref: PreferenceConfig) -> dict:
    """The last evaluation on the held-out pairs (DPO/ORPO; run now if the last step had none). GRPO has none: its
    rewards are the training curves, and the pipeline's evaluate steps score the tuned model."""
    if pref.method == "grpo":
        return {}
    evals = [e for e in trainer.state.log_history if "eval_loss" in e]
    final_eval_done = bool(evals) and evals[-1].get("step") == trainer.state.global_step
    return evals[-1] if final_eval_done else trainer.evaluate()


def train_preference(
    model_cfg: ModelConfig,
    adapter_cfg: AdapterConfig,
    cfg: TrainConfig,
    pref: PreferenceConfig,
    initial_adapter: Path,
    train_rows,
    eval_rows,
    output_dir: Path,
    callbacks: Optional[list] = None,
    checkpoint_dir: Optional[Path] = None,
) -> PreferenceResult:
    """Load the base as configured, attach `initial_adapter` trainable, tune it on the preference pairs, save the
    tuned adapter in `output_dir`. Checkpoints and resume work as in SFT (`train.checkpoint_steps`)."""
    mixed_precision(cfg, model_cfg)  # refuse an impossible precision before loading anything
    check_attention_backend(model_cfg)
    tokenizer = load_tokenizer(model_cfg)
    model = prepare_for_training(load_model(model_cfg), adapter_cfg)
    model = attach_adapter(model, initial_adapter, is_trainable=True)

    with tempfile.TemporaryDirectory(prefix=f"{pref.method}-") as scratch:
        work_dir = checkpoint_dir if (checkpoint_dir and cfg.checkpoint_steps) else Path(scratch)
        resume = last_checkpoint(work_dir)
        if resume:
            logger.warning("Resuming training from %s (step %d of %s)", resume, checkpoint_step(resume), cfg.max_steps)
        args = trainer_arguments(pref, cfg, adapter_cfg, model_cfg, str(work_dir))
        samples = SampledCompletions(cfg.logging_steps, pref.num_generations) if pref.method == "grpo" else None
        trainer = build_trainer(model, tokenizer, pref, args, train_rows, eval_rows, callbacks, samples)
        use_console_progress(trainer)
        start = time.perf_counter()
        with out_of_memory_advice(model_cfg, adapter_cfg, cfg), heap_kept(on_cpu=model.device.type == "cpu"):
            trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        seconds = time.perf_counter() - start
        eval_metrics = final_evaluation(trainer, pref)
        tuned = trainer.model
        if "ref" in getattr(tuned, "peft_config", {}):  # DPO's frozen copy of the start: not part of the result
            tuned.delete_adapter("ref")
        save_adapter(tuned, output_dir)
        if work_dir != Path(scratch):
            shutil.rmtree(work_dir, ignore_errors=True)  # done: the tuned adapter is the durable result now
    history = trainer.state.log_history
    losses = [entry["loss"] for entry in history if "loss" in entry]
    return PreferenceResult(
        adapter_dir=output_dir, method=pref.method, steps=trainer.state.global_step, train_seconds=round(seconds, 3),
        first_train_loss=float(losses[0]) if losses else float("nan"),
        final_train_loss=float(losses[-1]) if losses else float("nan"),
        eval={k: float(v) for k, v in eval_metrics.items() if isinstance(v, (int, float))},
        peak_memory_bytes=peak_memory_bytes(), resumed_from_step=checkpoint_step(resume) if resume else 0,
        log_history=history, samples=samples.rows(reward_weights(pref)) if samples else [],
    )
