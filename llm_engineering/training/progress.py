"""Training progress for the console: one bar (or a line every few percent off a terminal) with the loss and
tokens/s, in place of transformers' PrinterCallback, which prints every log entry as a raw dict."""

from __future__ import annotations

import time

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from llm_engineering.console import Progress, progress_mode


class TrainingProgress(TrainerCallback):
    def __init__(self):
        self.progress = None
        self.start = None  # (time, tokens seen) at the first step of this process (after a resume: that step)

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and progress_mode() != "off":
            self.progress = Progress(state.max_steps, "training", unit="step")
            if state.global_step:  # resumed: the steps already done count as done
                self.progress.update(state.global_step)
            self.start = (time.perf_counter(), state.num_input_tokens_seen)

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress:
            self.progress.update(1)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self.progress or not logs:
            return
        seconds = time.perf_counter() - self.start[0]
        tokens = state.num_input_tokens_seen - self.start[1]
        figures = {"loss": logs.get("loss"), "eval_loss": logs.get("eval_loss"),
                   "reward accuracy": logs.get("rewards/accuracies"),  # DPO/ORPO
                   "reward": logs.get("reward"), "kl": logs.get("kl"),  # GRPO: the summed reward of the samples
                   "tokens/s": round(tokens / seconds) if seconds > 0 and tokens > 0 else None}
        self.progress.update(0, **{k: v for k, v in figures.items() if v is not None})

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress:
            self.progress.close()
            self.progress = None


def use_console_progress(trainer) -> None:
    """Swap transformers' own printing callbacks (raw dicts, or a bar per evaluation) for ours."""
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(TrainingProgress())
