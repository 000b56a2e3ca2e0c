"""Greedy, batched chat completions: what evaluation scores, the export step's serving sample shows and the replay
maker keeps. Each completion says whether it ended by itself (an end-of-turn or EOS token) or ran into
`max_new_tokens`."""

from __future__ import annotations

import torch

from llm_engineering.console import Progress
from llm_engineering.model.loading import padding_side


@torch.no_grad()
def generate(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int, batch_size: int, tools=None):
    """Greedy completions for chat prompts: [(text, stopped_by_eos)]; `tools`: each conversation's tool definitions."""
    tools = tools or [None] * len(conversations)
    model.eval()
    with padding_side(tokenizer, "left"):  # decoder-only models continue from the right edge
        return _generate(model, tokenizer, conversations, max_new_tokens, batch_size, tools)


def _generate(model, tokenizer, conversations, max_new_tokens, batch_size, tools):
    eos_ids = end_ids(model, tokenizer)
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


def end_ids(model, tokenizer) -> list[int]:
    """The ids a greedy answer stops at: the generation config's end tokens and the tokenizer's EOS."""
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured]
    return sorted({i for i in ids + [tokenizer.eos_token_id] if i is not None})
