"""Held-out perplexity: exp of the mean negative log-likelihood of the tokens training is scored on (the labels that
are not masked), over all rows together, token-weighted. Lower is better; it needs no reference answers, so it is the
metric for plain-text data and a second view of any fine-tune."""

from __future__ import annotations

import math

import torch

from llm_engineering.data.tokenization import IGNORE


@torch.no_grad()
def perplexity(model, rows: list[dict], batch_size: int = 4, pad_id: int = 0) -> float:
    """Perplexity over `rows` (each with `input_ids` and `labels`); nan when no row has a scored token."""
    model.eval()
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        width = max(len(r["input_ids"]) for r in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, row in enumerate(batch):
            n = len(row["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(row["input_ids"]), torch.tensor(row["labels"]), 1
        logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits.float()
        targets = labels[:, 1:].to(logits.device)  # token t is predicted from the tokens before it
        total_nll += torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE, reduction="sum"
        ).item()
        total_tokens += int((targets != IGNORE).sum())
    return math.exp(total_nll / total_tokens) if total_tokens else float("nan")
