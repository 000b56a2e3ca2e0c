"""Generation-based task evaluation: greedy, batched, on held-out rows.

The same function scores the base model and the fine-tuned export, so "did fine-tuning help" is one comparison of
two numbers computed the same way. It also reports how often generation ended with EOS on its own (a model that never
learned to stop runs into `max_new_tokens`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

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


def evaluate_generation(model, tokenizer, rows: list[dict], metric: str, max_new_tokens: int, batch_size: int,
                        answer_margin: Optional[int] = None):
    """Score greedy completions of each row's prompt (all turns but the last) against its last assistant turn.
    `answer_margin`: each answer is cut at its reference's length in tokens plus this many (at most
    `max_new_tokens`), so a model that never stops (a base model) costs what the answers need, not the limit."""
    prompts = [chat_messages(row["messages"][:-1]) for row in rows]
    references = [row["messages"][-1]["content"] for row in rows]
    bounds = max_new_tokens
    if answer_margin is not None:
        lengths = [len(ids) for ids in tokenizer(references, add_special_tokens=False)["input_ids"]]
        bounds = [min(max_new_tokens, n + answer_margin) for n in lengths]
    outputs = generate(model, tokenizer, prompts, bounds, batch_size, [row_tools(row) for row in rows])
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

