"""Generation-based task evaluation: greedy, batched, on held-out rows.

The same function scores the base model and the fine-tuned export, so "did fine-tuning help" is one comparison of
two numbers computed the same way. It also reports how often generation ended with EOS on its own (a model that never
learned to stop runs into `max_new_tokens`).
"""

from __future__ import annotations

from dataclasses import dataclass

from llm_engineering.data.formats import chat_messages, row_tools
from llm_engineering.model.generation import generate
from llm_engineering.scoring import SCORERS, answer_of


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

