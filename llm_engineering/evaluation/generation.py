"""Generation-based task evaluation: greedy, batched, on held-out rows.

The same function scores the base model and the fine-tuned export, so "did fine-tuning help" is one comparison of
two numbers computed the same way. It also reports how often generation ended with EOS on its own (a model that never
learned to stop runs into `max_new_tokens`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from llm_engineering.data.formats import chat_messages, row_tools
from llm_engineering.model.generation import generate


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

