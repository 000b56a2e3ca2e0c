"""Generation-based task evaluation: greedy, batched, on held-out rows.

The same function scores the base model and the fine-tuned export, so "did fine-tuning help" is one comparison of
two numbers computed the same way. It also reports how often generation ended with EOS on its own (a model that never
learned to stop runs into `max_new_tokens`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import torch

from llm_engineering.console import Progress
from llm_engineering.data.formats import chat_messages, row_tools
from llm_engineering.model.loading import padding_side


@dataclass(frozen=True)
class Sample:
    prompt: str
    reference: str
    output: str
    stopped: bool
    score: float  # 1.0/0.0 for the match metrics, the F-measure for rouge_l


@dataclass(frozen=True)
class EvalResult:
    metric: str
    score: float
    stop_rate: float
    samples: list[Sample]

    def metrics(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}_{self.metric}": self.score, f"{prefix}_stop_rate": self.stop_rate}


def json_equal(output: str, reference: str) -> bool:
    try:
        return json.loads(output) == json.loads(reference)
    except (json.JSONDecodeError, TypeError):
        return False


def json_valid(output: str, reference: str) -> bool:
    """The output parses as JSON (for tasks whose answers are structured but not unique)."""
    try:
        json.loads(output)
        return True
    except json.JSONDecodeError:
        return False


def rouge_l(output: str, reference: str) -> float:
    """ROUGE-L F-measure over whitespace tokens: longest common subsequence, as in Lin (2004) with beta = 1."""
    out, ref = output.split(), reference.split()
    if not out or not ref:
        return float(out == ref)
    previous = [0] * (len(ref) + 1)
    for token in out:
        current = [0]
        for j, ref_token in enumerate(ref):
            current.append(previous[j] + 1 if token == ref_token else max(previous[j + 1], current[j]))
        previous = current
    lcs = previous[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(out), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def contains(output: str, reference: str) -> bool:
    """The reference occurs in the output as a whole word or number, ignoring case ("Paris" in "It is Paris.")."""
    pattern = r"(?<![0-9a-z])" + re.escape(reference.strip().lower()) + r"(?![0-9a-z])"
    return re.search(pattern, output.lower()) is not None


THINKING = re.compile(r"^\s*<think>.*?</think>\s*", re.DOTALL)


def answer_of(output: str) -> str:
    """The answer a reasoning model gives after its <think> block (Qwen3, DeepSeek-R1 style): what is scored."""
    return THINKING.sub("", output, count=1)


SCORERS = {
    "exact_match": lambda output, reference: output.strip() == reference.strip(),
    "contains": contains,
    "json_exact_match": json_equal,
    "json_valid": json_valid,
    "rouge_l": rouge_l,
}


@torch.no_grad()
def generate(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int, batch_size: int, tools=None):
    """Greedy completions for chat prompts: [(text, stopped_by_eos)]; `tools`: each conversation's tool definitions."""
    tools = tools or [None] * len(conversations)
    model.eval()
    with padding_side(tokenizer, "left"):  # decoder-only models continue from the right edge
        return _generate(model, tokenizer, conversations, max_new_tokens, batch_size, tools)


def _generate(model, tokenizer, conversations, max_new_tokens, batch_size, tools):
    eos_ids = _eos_ids(model, tokenizer)
    results = []
    with Progress(len(conversations), "generating", unit="prompt") as progress:
        for start in range(0, len(conversations), batch_size):
            batch = conversations[start: start + batch_size]
            results += _generate_batch(model, tokenizer, batch, tools[start: start + batch_size], max_new_tokens,
                                       eos_ids)
            progress.update(len(batch))
    return results


def _generate_batch(model, tokenizer, conversations, tools, max_new_tokens, eos_ids):
    texts = [tokenizer.apply_chat_template(c, tools=t, tokenize=False, add_generation_prompt=True)
             for c, t in zip(conversations, tools)]
    inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    output = model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=eos_ids,
        pad_token_id=tokenizer.pad_token_id,
    )
    results = []
    for row in output[:, inputs["input_ids"].shape[1] :].tolist():
        stopped = any(t in eos_ids for t in row)
        if stopped:
            row = row[: next(i for i, t in enumerate(row) if t in eos_ids)]
        results.append((tokenizer.decode(row, skip_special_tokens=True), stopped))
    return results


def _eos_ids(model, tokenizer) -> list[int]:
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured]
    return sorted({i for i in ids + [tokenizer.eos_token_id] if i is not None})


def evaluate_generation(model, tokenizer, rows: list[dict], metric: str, max_new_tokens: int, batch_size: int):
    """Score greedy completions of each row's prompt (all turns but the last) against its last assistant turn."""
    prompts = [chat_messages(row["messages"][:-1]) for row in rows]
    references = [row["messages"][-1]["content"] for row in rows]
    outputs = generate(model, tokenizer, prompts, max_new_tokens, batch_size, [row_tools(row) for row in rows])
    scorer = SCORERS[metric]
    samples = [
        Sample(prompt=p[-1]["content"], reference=ref, output=out, stopped=stopped,
               score=float(scorer(answer_of(out), ref)))
        for p, ref, (out, stopped) in zip(prompts, references, outputs)
    ]
    n = max(len(samples), 1)
    return EvalResult(
        metric=metric,
        score=sum(s.score for s in samples) / n,
        stop_rate=sum(s.stopped for s in samples) / n,
        samples=samples,
    )

