"""Greedy, batched chat completions: what evaluation scores, the export step's serving sample shows and the replay
maker keeps. Each completion says whether it ended by itself (an end-of-turn or EOS token) or ran into
`max_new_tokens`."""

from __future__ import annotations

import torch

from llm_engineering.console import Progress
from llm_engineering.model.loading import padding_side


@torch.no_grad()
def generate(model, tokenizer, conversations: list[list[dict]], max_new_tokens, batch_size: int, tools=None):
    """Greedy completions for chat prompts: [(text, stopped_by_eos)]; `tools`: each conversation's tool definitions;
    `max_new_tokens`: one bound for all, or one per conversation (a batch generates to its largest)."""
    return [(tokenizer.decode(ids, skip_special_tokens=True), stopped)
            for ids, stopped in generate_ids(model, tokenizer, conversations, max_new_tokens, batch_size, tools)]


@torch.no_grad()
def generate_ids(model, tokenizer, conversations: list[list[dict]], max_new_tokens, batch_size: int, tools=None):
    """Greedy completions as token ids, without the end token: [(ids, stopped_by_eos)]."""
    tools = tools or [None] * len(conversations)
    bounds = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(conversations)
    model.eval()
    eos_ids = end_ids(model, tokenizer)
    results = []
    with padding_side(tokenizer, "left"), Progress(len(conversations), "generating", unit="prompt") as progress:
        for start in range(0, len(conversations), batch_size):  # left: decoder-only models continue from the right
            batch = slice(start, start + batch_size)
            answers = _generate_batch(model, tokenizer, conversations[batch], tools[batch], max(bounds[batch]),
                                      eos_ids)
            results += [_within(ids, stopped, bound) for (ids, stopped), bound in zip(answers, bounds[batch])]
            progress.update(len(conversations[batch]))
    return results


def _within(ids: list[int], stopped: bool, bound: int) -> tuple[list[int], bool]:
    """A row's answer cut at its own bound: the same answer whichever rows share its batch (the batch generates to
    its largest bound). Its end token counts: an answer of `bound` tokens had no room left to stop."""
    return (ids, stopped) if len(ids) < bound else (ids[:bound], False)


def prompt_ids(tokenizer, conversation: list[dict], tools=None) -> list[int]:
    """The token ids generation starts from: the chat template with the assistant turn opened."""
    return tokenizer(_prompt_text(tokenizer, conversation, tools), add_special_tokens=False)["input_ids"]


def _prompt_text(tokenizer, conversation: list[dict], tools=None) -> str:
    return tokenizer.apply_chat_template(conversation, tools=tools, tokenize=False, add_generation_prompt=True)


def _generate_batch(model, tokenizer, conversations, tools, max_new_tokens, eos_ids):
    texts = [_prompt_text(tokenizer, c, t) for c, t in zip(conversations, tools)]
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
        results.append((row, stopped))
    return results


def end_ids(model, tokenizer) -> list[int]:
    """The ids a greedy answer stops at: the generation config's end tokens and the tokenizer's EOS."""
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured]
    return sorted({i for i in ids + [tokenizer.eos_token_id] if i is not None})
