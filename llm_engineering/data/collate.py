"""Packed batches with no attention across the rows packed into one sequence.

TRL packs rows (best-fit decreasing) and gives each packed sequence its rows' lengths; the collator restarts the
position ids at each row. With sdpa or eager attention that alone still lets a row attend to the rows packed before
it (measured here: logits differ by up to 9 on SmolLM2). `block_diagonal_attention` therefore turns the 2-D padding
mask into a [batch, 1, L, L] block-diagonal causal mask right before the model's forward, wherever a sequence holds
more than one row. The batch keeps its 2-D mask until then, so token counts (tokens/s, TRL's num_tokens) stay right.
flash_attention_2 and flex_attention (CUDA) get TRL's padding-free varlen batch instead (one flattened sequence),
which is exact and needs no L x L mask: flash attention reads the row boundaries from TRL's cu_seq_lens, flex
attention's block-sparse document mask is built by transformers from the restarting position ids.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling


@dataclass
class PackedCollator(DataCollatorForLanguageModeling):
    """TRL's collator, with positions restarting per packed row and no label across a row boundary.
    `positions_only`: drop the flash-attention boundaries of a padding-free batch (flex attention does not read them,
    and as inputs of a compiled layer their changing sizes would only add guards)."""

    positions_only: bool = False

    def __post_init__(self):
        self.return_position_ids = not self.padding_free  # padding-free returns position ids anyway

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = super().torch_call(examples)
        # a row's first token must not be predicted from the end of the row packed before it
        batch["labels"][batch["position_ids"] == 0] = -100
        if self.positions_only:
            for key in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx"):
                batch.pop(key, None)
        return batch


def non_padding_tokens(batch: dict[str, Any]) -> int:
    """The tokens of a collated batch that are not padding. A padding-free batch has no attention mask, and
    transformers then counts the tokens unequal to the pad id, which also drops every real token with that id (pad is
    often the end-of-turn token: 3 % of the GPU profile's tokens, so 3 % off its tokens/s). Its pads are one-token
    rows (position 0, followed by position 0 or the end); a real row holds a prompt and a reply, never one token."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    positions = batch["position_ids"]
    following = torch.nn.functional.pad(positions[..., 1:], (0, 1))
    return int((~((positions == 0) & (following == 0))).sum())


@contextlib.contextmanager
def block_diagonal_attention(model):
    """While active, a forward with several rows per sequence (position ids restarting at 0) gets a block mask
    (transformers passes a 4-D mask to the attention as it is: bool for sdpa, additive float for eager)."""
    eager = getattr(model.config, "_attn_implementation", None) == "eager"

    def widen_mask(module, args, kwargs):
        mask, positions = kwargs.get("attention_mask"), kwargs.get("position_ids")
        if mask is None or positions is None or mask.dim() != 2:
            return None
        mask = mask.bool()
        starts = (positions == 0) & mask
        if int(starts.sum(dim=1).max()) <= 1:
            return None  # one row per sequence: the model's own causal + padding mask is right
        allowed = block_causal_mask(starts, mask)
        if eager:  # eager attention adds the mask to the scores: it needs 0 / -inf, a bool mask would add 1 / 0
            allowed = torch.zeros(allowed.shape, device=allowed.device).masked_fill(~allowed,
                                                                                   torch.finfo(torch.float32).min)
        kwargs["attention_mask"] = allowed
        return args, kwargs

    handle = model.register_forward_pre_hook(widen_mask, with_kwargs=True)
    try:
        yield model
    finally:
        handle.remove()


def block_causal_mask(starts: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, 1, L, L] bool: token i sees token j iff both belong to the same packed row and j <= i.
    Padding sees only itself (an all-False row would give NaN in sdpa)."""
    segment = torch.where(mask, starts.long().cumsum(dim=1), -1)
    width = segment.shape[1]
    same = (segment[:, :, None] == segment[:, None, :]) & mask[:, :, None]
    causal = torch.ones(width, width, dtype=torch.bool, device=mask.device).tril()
    padding_self = (~mask)[:, :, None] & torch.eye(width, dtype=torch.bool, device=mask.device)
    return ((same & causal) | padding_self)[:, None]
