"""Teacher-forced scores need the output layer only where a token is scored: the answer at the end of each row.
On a small model that layer is most of the forward pass (SmolLM2: 49k words x 576 against 30 thin layers), so
computing it at every position of a prompt of 100 tokens for a 20-token answer spends most of the time on logits
nobody reads. Rows are padded on the left, so every row's scored tail sits at the end of the batch, and the model's
own `logits_to_keep` computes the output layer for those positions only."""

from __future__ import annotations

import torch


@torch.no_grad()
def tail_logits(model, sequences: list[list[int]], tails: list[int], pad_id: int) -> list[torch.Tensor]:
    """Per sequence, the fp32 logits that predict its last `tails[i]` tokens (one row per token, from the tokens
    before it). One forward pass over all sequences: batch them to bound memory."""
    if any(not 0 < tail < len(s) for s, tail in zip(sequences, tails)):
        raise ValueError("each scored tail needs at least one token before it and one token in it")
    width = max(len(s) for s in sequences)
    keep = max(tails) + 1  # the last position predicts nothing, and the row before the tail predicts its first token
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, sequence in enumerate(sequences):
        ids[i, width - len(sequence):] = torch.tensor(sequence)
        mask[i, width - len(sequence):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # each row counts from its first real token, as unpadded
    logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                   position_ids=positions.to(model.device), logits_to_keep=keep).logits.float().cpu()
    return [logits[i, keep - 1 - tail: keep - 1] for i, tail in enumerate(tails)]
