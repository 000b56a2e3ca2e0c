"""What a user reads in the terminal: one line per stage, progress that suits where the output goes, a closing
summary, and other libraries' noise filtered at its source (here, in one place).

Progress is a bar on a terminal and, where the output is a log (CI, a file), a line every `LINE_EVERY` percent,
since a bar redrawn with carriage returns is unreadable there. `LLM_ENGINEERING_PROGRESS=bar|lines|off` overrides.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import warnings
from typing import Any, Optional

LINE_EVERY = 20  # percent between progress lines when the output is not a terminal

# Other libraries' warnings that tell our user nothing they can act on: (category, message pattern, origin module
# pattern). Our own warnings, and these libraries' other warnings, stay visible.
FOREIGN_WARNINGS = [
    (FutureWarning, "", r"(transformers|peft|trl|accelerate|torch|datasets|huggingface_hub|mlflow|zenml|pydantic"
                        r"|sqlalchemy|comet_ml|bitsandbytes)(\.|$)"),
    (DeprecationWarning, "", r"(transformers|peft|trl|accelerate|torch|datasets|huggingface_hub|mlflow|zenml"
                             r"|pydantic|sqlalchemy|comet_ml|bitsandbytes|pkg_resources|google|jupyter)(\.|$)"),
    (UserWarning, r"PiSSA changes the base weights", r"peft\."),  # our own merge handles PiSSA's residual base
]

# Other libraries' log lines that say nothing to our user: (logger, message start, highest level dropped).
FOREIGN_LOG_LINES = [
    # transformers asks for a Comet key whenever comet_ml is installed, used or not (our Comet tracker needs no key
    # offline, and names a missing one itself)
    ("transformers.integrations.integration_utils", "comet_ml is installed but", logging.WARNING),
    # ZenML's MLflow tracker tries to turn off autologging for frameworks that are not installed, after every step
    ("zenml.integrations.mlflow.experiment_trackers.mlflow_experiment_tracker", "Failed to disable MLflow autolog",
     logging.WARNING),
    # MLflow's transformers flavor looks for a Hub model card and license while logging the export (ours are written)
    ("mlflow.transformers", "The model card could not be retrieved from the hub", logging.WARNING),
    ("mlflow.transformers", "Unable to find license information for this model", logging.WARNING),
    # lm-evaluation-harness warns that it was handed a loaded model, which is how we call it
    ("lm_eval.models.huggingface", "`pretrained` model kwarg is not of type `str`", logging.WARNING),
    ("lm_eval.models.huggingface", "Passed an already-initialized model", logging.WARNING),
    # bitsandbytes looks for optional CUDA/CPU kernel packages first and says so on every model load
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward", logging.WARNING),
    # MLflow's first connection to a new local database
    ("mlflow.store.db.utils", "", logging.INFO),
    ("alembic.runtime.migration", "", logging.INFO),
]

# Sources whose INFO lines are all chatter (every step, every task): only their warnings and errors are shown.
FOREIGN_INFO_SOURCES = [
    "mlflow.system_metrics",  # "Started monitoring system metrics." ... "Successfully terminated ..." per step
    "lm_eval",  # seeds, task building, request counts
]


class _DropLines(logging.Filter):
    def __init__(self, prefix: str, level: int):
        super().__init__()
        self.prefix, self.level = prefix, level

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno <= self.level and str(record.msg).startswith(self.prefix))


def quiet_foreign_noise() -> None:
    """Install the filters above; idempotent. Called wherever a pipeline or step process starts (orchestration/)."""
    for category, message, module in FOREIGN_WARNINGS:  # re-adding an identical filter replaces it
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name, prefix, level in FOREIGN_LOG_LINES:
        source = logging.getLogger(name)
        if not any(isinstance(f, _DropLines) and f.prefix == prefix for f in source.filters):
            source.addFilter(_DropLines(prefix, level))
    for name in FOREIGN_INFO_SOURCES:
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no "Loading weights" bar per model load
    try:  # their bars are per file, per split and per save; ours are per stage (datasets_bar turns one on)
        import datasets
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        datasets.disable_progress_bars()
    except ImportError:
        pass


@contextlib.contextmanager
def datasets_bar(desc: str, rows: int):
    """datasets' own bar for one long `Dataset.map` on a terminal; elsewhere one line when it is done."""
    import datasets

    start, bars_were_on = time.perf_counter(), datasets.is_progress_bar_enabled()
    if progress_mode() == "bar":
        datasets.enable_progress_bars()
    try:
        yield
    finally:
        if not bars_were_on:
            datasets.disable_progress_bars()
    if progress_mode() == "lines":
        say(f"    {desc}: {rows} rows in {time.perf_counter() - start:.1f}s")


def progress_mode() -> str:
    forced = os.environ.get("LLM_ENGINEERING_PROGRESS")
    if forced in ("bar", "lines", "off"):
        return forced
    stream = sys.__stderr__
    return "bar" if stream is not None and stream.isatty() else "lines"


def say(line: str) -> None:
    """A console line of ours: stdout, flushed (ZenML's step log capture passes it through and keeps it)."""
    print(line, flush=True)


class Progress:
    """One bar for one stage (or one line every LINE_EVERY percent off a terminal). `update(n, **figures)`."""

    def __init__(self, total: int, desc: str, unit: str = "it"):
        self.total, self.desc, self.unit = max(int(total), 1), desc, unit
        self.done, self.start, self.next_line = 0, time.perf_counter(), LINE_EVERY
        self.figures: dict[str, Any] = {}
        self.mode = progress_mode()
        self.bar = None
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, desc=desc, unit=unit, file=sys.__stderr__, dynamic_ncols=True,
                            leave=False)

    def update(self, n: int = 1, **figures: Any) -> None:
        self.done = min(self.done + n, self.total)
        self.figures.update({k: v for k, v in figures.items() if v is not None})
        if self.bar is not None:
            if figures:
                self.bar.set_postfix({k: _short(v) for k, v in self.figures.items()}, refresh=False)
            self.bar.update(n)
        elif self.mode == "lines":
            percent = 100 * self.done / self.total
            if percent >= self.next_line:
                while self.next_line <= percent:
                    self.next_line += LINE_EVERY
                extra = "".join(f", {k} {_short(v)}" for k, v in self.figures.items())
                say(f"    {self.desc}: {percent:3.0f}% ({self.done}/{self.total} {self.unit}, "
                    f"{time.perf_counter() - self.start:.0f}s{extra})")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# --- stage lines -----------------------------------------------------------------------------------------------

STAGES = {  # step name -> what the user calls it
    "load_dataset": "dataset",
    "load_base_model": "base model",
    "inject_adapter": "LoRA adapter",
    "train_sft": "SFT training",
    "start_adapter": "start adapter",
    "train_preference": "preference training",
    "chosen_conversations": "held-out chosen answers",
    "merge_start": "merge start adapter",
    "merge_adapter": "merge",
    "evaluate_base": "evaluate base",
    "evaluate_start": "evaluate start",
    "evaluate_finetuned": "evaluate fine-tuned",
    "export_model": "export + registry",
}


def stage_name(step: str) -> str:
    return STAGES.get(step, step)


def stage_started(step: str, index: Optional[int] = None, total: Optional[int] = None) -> None:
    say(f"{_counter(index, total)}{stage_name(step)} ...")


def stage_ended(step: str, seconds: Optional[float], metadata: dict[str, Any], error: Optional[BaseException] = None,
                index: Optional[int] = None, total: Optional[int] = None) -> None:
    took = f" in {_duration(seconds)}" if seconds is not None else ""
    if error is not None:
        say(f"{_counter(index, total)}{stage_name(step)} FAILED{took}: {type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}")
        return
    figure = stage_figure(step, metadata)
    say(f"{_counter(index, total)}{stage_name(step)} done{took}" + (f" · {figure}" if figure else ""))


def stage_cached(step: str, index: Optional[int] = None, total: Optional[int] = None) -> None:
    say(f"{_counter(index, total)}{stage_name(step)} cached (same inputs, code and settings as an earlier run)")


def _counter(index, total) -> str:
    return f"[{index}/{total}] " if index and total else ""


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    return f"{int(seconds // 60)}m{seconds % 60:02.0f}s"


def stage_figure(step: str, m: dict[str, Any]) -> str:
    """The figure that matters for a stage, from the metadata its step logged (missing keys: no figure)."""
    try:
        if step == "load_dataset":
            return (f"{m['train_rows']} train + {m['eval_rows']} eval rows of {m['rows_read']} read, "
                    f"{m['rows_invalid']} invalid, {m['rows_truncated']} truncated")
        if step == "load_base_model":
            quant = (m.get("quantization") or {}).get("method", "none")
            return (f"{m['model']}, {m['parameters'] / 1e6:.0f}M params, {quant}, "
                    f"{m['memory_footprint_mib']:.0f} MiB")
        if step == "inject_adapter":
            return (f"{m['trainable_parameters'] / 1e6:.2f}M trainable ({m['trainable_percent']:.2f} %), "
                    f"{m['lora_modules']} LoRA modules")
        if step == "train_sft":
            resumed = f", resumed from step {int(m['train_resumed_from_step'])}" if m.get(
                "train_resumed_from_step") else ""
            return (f"{int(m['train_steps'])} steps, loss {m['train_loss_first']:.3f} -> {m['train_loss_final']:.3f}, "
                    f"{m['train_tokens_per_second']:.0f} tokens/s{resumed}")
        if step == "train_preference":
            return (f"{int(m['pref_steps'])} steps, loss {m['pref_train_loss_first']:.3f} -> "
                    f"{m['pref_train_loss_final']:.3f}, held-out reward accuracy "
                    f"{m['pref_eval_reward_accuracies']:.3f}, margin {m['pref_eval_reward_margins']:.3f}")
        if step.startswith("merge_"):
            return (f"max |Δlogit| {m['merge_max_abs_logit_diff']:.2g} vs the adapter "
                    f"(as saved: {m['merge_saved_max_abs_logit_diff']:.2g}, KL {m['merge_saved_mean_kl']:.1e}), "
                    f"top-1 agreement {m['merge_top1_agreement']:.3f}")
        if step.startswith("evaluate_"):
            scores = {k: v for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                      and k.split("_")[0] in ("base", "start", "finetuned")}
            return ", ".join(f"{k.split('_', 1)[1]} {v:.3f}" for k, v in sorted(scores.items()))
        if step == "export_model":
            return headline(m)
    except (KeyError, TypeError, ValueError):
        return ""
    return ""


def headline(m: dict[str, Any]) -> str:
    """base (-> the start a preference run tuned) -> fine-tuned on the task metric, the regression drop, and where the
    model went in the registry."""
    parts = []
    for key in sorted(m):
        if key.startswith("finetuned_") and not key.endswith(("stop_rate", "perplexity", "regression_score",
                                                              "general_agreement", "general_probability", "_ci_low",
                                                              "_ci_high")):
            metric = key[len("finetuned_"):]
            path = [m.get(f"{role}_{metric}") for role in ("base", "start")] + [m[key]]
            parts.append(f"{metric} " + " -> ".join(f"{v:.3f}" for v in path if isinstance(v, (int, float)))
                         + _interval(m, key))
    for drop in ("general_drop", "regression_drop"):
        if isinstance(m.get(drop), (int, float)):
            parts.append(f"{drop} {m[drop]:.3f}{_interval(m, drop)}")
    if m.get("version"):
        parts.append(f"{m.get('registered_model_name')} v{m['version']} @{m.get('promotion') or 'no alias'}")
    return ", ".join(parts)


def _interval(m: dict[str, Any], key: str) -> str:
    low, high = m.get(f"{key}_ci_low"), m.get(f"{key}_ci_high")
    return f" [{low:.3f}, {high:.3f}]" if isinstance(low, (int, float)) and isinstance(high, (int, float)) else ""


def failure_block(run_name: str, failures: list[tuple[str, str]]) -> str:
    """The closing block of a failed run: each failed step with its reason, and where the rest is."""
    lines = ["", "=" * 78, f"Run failed: {run_name}"]
    for step, reason in failures:
        lines.append(f"  failed     {step}: {reason}")
    lines += ["  rerun      the same command: the steps that finished come from ZenML's cache",
              "  traceback  make dashboard (the run's failed step, Logs), or rerun with LLM_ENGINEERING_TRACEBACK=1",
              "=" * 78]
    return "\n".join(lines)


def refusal_block(reason: str) -> str:
    """The closing block of a run our own check stopped outside any step (a bad config, a missing file, found while
    ZenML compiles the pipeline): the check's message, which names what is wrong and where."""
    return "\n".join(["", "=" * 78, "Run stopped:",
                      *(f"  {line}" for line in reason.splitlines()),
                      "  traceback  rerun with LLM_ENGINEERING_TRACEBACK=1", "=" * 78])


def summary_block(summary: dict[str, Any], run_name: str, mlflow_url: Optional[str]) -> str:
    """The closing block of a pipeline run: headline metrics, where the model is, and where to look at the run."""
    lines = ["", "=" * 78, f"Fine-tune finished: {run_name}"]
    scores = headline(summary)
    if scores:
        lines.append(f"  result     {scores}")
    if summary.get("promotion_reason"):
        lines.append(f"  gate       {summary['promotion_reason']}")
    if summary.get("export_dir"):
        lines.append(f"  export     {summary['export_dir']}")
    if summary.get("version"):
        lines.append(f"  registry   models:/{summary['registered_model_name']}/{summary['version']}"
                     + (f" (alias {summary['promotion']}: make serve)" if summary.get("promotion") == "champion"
                        else ""))
    if mlflow_url:
        lines.append(f"  MLflow     {mlflow_url}   (make ui)")
    lines.append(f"  ZenML      run {run_name}   (zenml pipeline runs list)")
    if summary.get("vllm_warning"):
        lines.append(f"  note       {summary['vllm_warning']}")
    lines.append("=" * 78)
    return "\n".join(lines)


def run_description(base_model: str, data: dict[str, Any], config: dict[str, Any], summary: dict[str, Any]) -> str:
    """The MLflow run's Description (markdown): what was fine-tuned on what, how, and how it came out."""
    quant = (config.get("model", {}).get("quantization") or {}).get("method", "none")
    adapter, train = config.get("adapter", {}), config.get("train", {})
    method = f"{'QLoRA' if quant in ('4bit', '8bit') else 'LoRA'} r={adapter.get('r')} ({quant} base), " \
             f"{train.get('max_steps') or train.get('num_epochs')} {'steps' if train.get('max_steps') else 'epochs'}" \
             f" at lr {train.get('learning_rate')}"
    lines = [f"**{base_model}** fine-tuned on **{data.get('source')}** ({data.get('format')}, "
             f"{data.get('train_rows')} train / {data.get('eval_rows')} eval rows) with {method}.", ""]
    if headline(summary):
        lines.append(f"Result: {headline(summary)}.")
    if summary.get("promotion_reason"):
        lines.append(f"Gate: {summary['promotion_reason']}")
    return "\n".join(lines)
