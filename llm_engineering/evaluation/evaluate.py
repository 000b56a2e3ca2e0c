"""The evaluate stage: one model (the base, or the fine-tuned merge) scored on the eval rows and the regression probes.

`evaluate_checkpoint` is the stage's entry point (the step, bench/ and tests call it). The pipeline runs it twice, on
the base model and on the merged model, with the same settings, so "did fine-tuning help, did it break anything" is a
comparison of numbers computed the same way (`compare`); the base model's run is a cacheable step of its own.

- the task metric: greedy generation on each row's prompt against its last assistant turn (chat data);
- perplexity of the scored tokens (every format; the task metric for plain text);
- the regression probes: short general questions with short answers (`probes.jsonl`, which the embedded base model
  answers correctly) plus the user's own; `regression_drop` is the share the fine-tune lost;
- general ability against the base model's own answers (`general.py`): the base evaluation answers ~200 everyday
  prompts, every other evaluation gets those answers (`reference`) and is scored on the probability it gives their
  tokens; `general_drop` is what the gate decides "lost general ability" on;
- lm-evaluation-harness tasks (`eval.harness.tasks`) on the fine-tuned model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from llm_engineering.evaluation.generation import evaluate_generation
from llm_engineering.intervals import mean_interval, wilson
from llm_engineering.evaluation.perplexity import perplexity

PROBES = Path(__file__).with_name("probes.jsonl")
ROLES = ("base", "start", "finetuned")  # start: the adapter a preference run tuned (the SFT model), merged


@dataclass
class ModelEvaluation:
    role: str  # one of ROLES
    metrics: dict[str, float]
    samples: list[dict] = field(default_factory=list)  # set, prompt, reference, output, score
    eval_fingerprint: str = ""  # of the rows and settings scored: versions compare only on equal fingerprints
    general: list[dict] = field(default_factory=list)  # prompt, the base's answer_ids, this model's agreement

    def as_dict(self) -> dict:
        return asdict(self)


def evaluate_model(model, tokenizer, rows: list[dict], probes: list[dict], evaluation, task_metric: str,
                   role: str, reference: Optional[list[dict]] = None) -> ModelEvaluation:
    """Score a loaded model: `rows` (eval rows with messages or text, input_ids, labels), `probes` (chat rows).
    `reference`: the base evaluation's `general` answers; the base (role "base") makes them."""
    metrics: dict[str, float] = {}
    samples: list[dict] = []
    chat = [row for row in rows if row.get("messages")]
    if task_metric != "perplexity" and chat:
        task = evaluate_generation(model, tokenizer, chat, task_metric, evaluation.max_new_tokens,
                                   evaluation.batch_size, evaluation.answer_margin)
        metrics.update(task.metrics(role))
        samples += _samples("task", task)
    metrics[f"{role}_perplexity"] = perplexity(model, rows, batch_size=16, pad_id=tokenizer.pad_token_id or 0)
    if probes:
        regression = evaluate_generation(model, tokenizer, probes, evaluation.regression.metric,
                                         evaluation.regression.max_new_tokens, evaluation.batch_size)
        metrics[f"{role}_regression_score"] = regression.score
        samples += _samples("regression", regression)
    general = _general_ability(model, tokenizer, evaluation, role, reference)
    if general:
        metrics[f"{role}_general_probability"] = sum(g["probability"] for g in general) / len(general)
        metrics[f"{role}_general_agreement"] = sum(g["agreement"] for g in general) / len(general)
    if evaluation.harness.tasks and role == "finetuned":
        from llm_engineering.evaluation.harness import run_harness

        metrics.update(run_harness(model, tokenizer, evaluation.harness))
    return ModelEvaluation(role, metrics, samples, general=general,
                           eval_fingerprint=eval_fingerprint(rows, probes, evaluation, task_metric))


def _general_ability(model, tokenizer, evaluation, role: str, reference: Optional[list[dict]]) -> list[dict]:
    """The base answers the general prompts (the reference); any other model is scored on the base's answers."""
    from llm_engineering.evaluation.general import agreement, base_answers, general_prompts

    settings = evaluation.regression
    if not settings.general_prompts or (role != "base" and not reference):
        return []
    conversations = general_prompts(settings.general_prompts)
    if role == "base":
        reference = base_answers(model, tokenizer, conversations, settings.general_max_new_tokens,
                                 evaluation.batch_size)
    scores = agreement(model, tokenizer, conversations, reference)
    return [{"prompt": ref["prompt"], "answer_ids": ref["answer_ids"], **score}
            for ref, score in zip(reference, scores)]


def evaluate_checkpoint(model_cfg, checkpoint: Optional[Path], eval_dataset, evaluation, task_metric: str,
                        dtype: str, max_length: int, role: Optional[str] = None,
                        reference: Optional[list[dict]] = None) -> ModelEvaluation:
    """The stage: load the base model (`checkpoint` None, unquantized in `dtype`) or a merged checkpoint, then score
    it on the eval rows (`evaluation.eval_file` when set, else the held-out split) and the probes. `role` names the
    metrics (base_..., finetuned_..., or start_... for the model a preference run started from). `reference`: the
    base evaluation's `general` answers, which any other model is scored on."""
    from llm_engineering.export.export_dir import load_exported
    from llm_engineering.model.loading import load_model, load_tokenizer

    if checkpoint is None:
        model, tokenizer, role = load_model(model_cfg, quantize=False, dtype=dtype), load_tokenizer(model_cfg), "base"
    else:
        (model, tokenizer), role = load_exported(Path(checkpoint)), role or "finetuned"
    rows = eval_rows(eval_dataset, evaluation, tokenizer, max_length)
    return evaluate_model(model, tokenizer, rows, probe_rows(evaluation, tokenizer, max_length), evaluation,
                          task_metric, role, reference)


def eval_rows(eval_dataset, evaluation, tokenizer, max_length: int) -> list[dict]:
    from llm_engineering.artifacts import first_rows
    from llm_engineering.data.prepare import prepare_file

    source = prepare_file(evaluation.eval_file, tokenizer, max_length) if evaluation.eval_file else eval_dataset
    return first_rows(source, evaluation.max_rows)


def probe_rows(evaluation, tokenizer, max_length: int) -> list[dict]:
    from llm_engineering.artifacts import first_rows
    from llm_engineering.data.prepare import prepare_file

    settings = evaluation.regression
    files = ([PROBES] if settings.builtin else []) + ([settings.file] if settings.file else [])
    rows = []
    for path in files:
        dataset = prepare_file(str(path), tokenizer, max_length)
        rows += first_rows(dataset, len(dataset))
    return rows


def compare(base: ModelEvaluation, tuned: ModelEvaluation,
            start: Optional[ModelEvaluation] = None) -> tuple[dict[str, float], list[dict]]:
    """The evaluations side by side (base, the `start` model a preference run tuned if any, the tuned one): all
    metrics plus `regression_drop`, and one table row per prompt."""
    metrics = {**base.metrics, **(start.metrics if start else {}), **tuned.metrics}
    if "base_regression_score" in metrics and "finetuned_regression_score" in metrics:
        metrics["regression_drop"] = metrics["base_regression_score"] - metrics["finetuned_regression_score"]
        metrics.update(_bounds("regression_drop", mean_interval(item_drops(base, tuned, "regression"))))
    if base.general and tuned.general:
        drop = mean_interval(item_drops(base, tuned, "general"))
        metrics["general_drop"] = drop.estimate
        metrics.update(_bounds("general_drop", drop))
        metrics["general_top1_drop"] = metrics["base_general_agreement"] - metrics["finetuned_general_agreement"]
    for evaluation in (base, start, tuned):  # each rate with its Wilson interval
        scores = item_scores(evaluation, "task") if evaluation else []
        name = next((k for k in evaluation.metrics if k.endswith(_RATE_METRICS)), None) if evaluation else None
        if scores and name:
            metrics.update(_bounds(name, wilson(sum(scores), len(scores))))
    table = []
    for i, (b, t) in enumerate(zip(base.samples, tuned.samples)):
        row = {"set": b["set"], "prompt": b["prompt"], "reference": b["reference"], "base_output": b["output"]}
        if start:
            row["start_output"] = start.samples[i]["output"]
        row["finetuned_output"] = t["output"]
        row["base_score"] = b["score"]
        if start:
            row["start_score"] = start.samples[i]["score"]
        row["finetuned_score"] = t["score"]
        table.append(row)
    return metrics, table


_RATE_METRICS = ("_json_exact_match", "_exact_match", "_contains", "_json_valid")


def item_scores(evaluation: ModelEvaluation, kind: str) -> list[float]:
    """Per-item scores of one set: "task" or "regression" (the eval table's rows), or "general" (probability)."""
    if kind == "general":  # what the gate decides on (general.py says why not top-1 agreement)
        return [g["probability"] for g in evaluation.general]
    return [s["score"] for s in evaluation.samples if s["set"] == kind]


def item_drops(base: ModelEvaluation, tuned: ModelEvaluation, kind: str) -> list[float]:
    """Per item, base minus tuned: how much of what the base did the tuned model lost (paired, same items)."""
    return [b - t for b, t in zip(item_scores(base, kind), item_scores(tuned, kind))]


def _bounds(name: str, interval) -> dict[str, float]:
    return {f"{name}_ci_low": interval.low, f"{name}_ci_high": interval.high}


def eval_fingerprint(rows: list[dict], probes: list[dict], evaluation, task_metric: str) -> str:
    settings = [task_metric, evaluation.max_new_tokens, evaluation.answer_margin,
                evaluation.regression.model_dump(mode="json")]
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for row in rows + probes:
        digest.update(json.dumps([row.get("messages"), row.get("text"), row["input_ids"], row["labels"]]).encode())
    return digest.hexdigest()


def _samples(kind: str, result) -> list[dict]:
    return [{"set": kind, "prompt": s.prompt, "reference": s.reference, "output": s.output, "score": s.score}
            for s in result.samples]
