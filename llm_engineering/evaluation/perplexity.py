"""Held-out perplexity: exp of the mean negative log-likelihood of the tokens training is scored on (the labels that
are not masked), over all rows together, token-weighted. Lower is better; it needs no reference answers, so it is the
metric for plain-text data and a second view of any fine-tune."""

from __future__ import annotations

import math

import torch

from llm_engineering.data.tokenization import IGNORE
from llm_engineering.evaluation.tail_logits import tail_logits


@torch.no_grad()
def perplexity(model, rows: list[dict], batch_size: int = 16, pad_id: int = 0) -> float:
    """Perplexity over `rows` (each with `input_ids` and `labels`); nan when no row has a scored token."""
    model.eval()
    total_nll, total_tokens = 0.0, 0
    scored = [row for row in rows if any(label != IGNORE for label in row["labels"][1:])]
    for start in range(0, len(scored), batch_size):
        batch = scored[start: start + batch_size]
        # each row's tail from its first scored token (after the first: token 0 has no tokens before it)
        tails = [len(r["labels"]) - next(i for i, label in enumerate(r["labels"]) if i and label != IGNORE)
                 for r in batch]
        logits = tail_logits(model, [r["input_ids"] for r in batch], tails, pad_id)
        for row, tail, row_logits in zip(batch, tails, logits):
            targets = torch.tensor(row["labels"][-tail:])
            total_nll += torch.nn.functional.cross_entropy(row_logits, targets, ignore_index=IGNORE,
                                                           reduction="sum").item()
            total_tokens += int((targets != IGNORE).sum())
    return math.exp(total_nll / total_tokens) if total_tokens else float("nan")
