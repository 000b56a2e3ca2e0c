"""General ability, measured against the user's own base model: did the fine-tune keep answering as the base did?

The base evaluation answers 100 everyday prompts (the first `eval.regression.general_prompts` of the 207 in
`general_prompts.jsonl`) greedily, once. Every later model is scored teacher-forced on those answers: per prompt, the
mean probability it gives each of the base's answer tokens (and its end token, when it stopped) after the same
prefix (`probability`), and the share of them its own top-1 picks (`agreement`). No reference answers are needed,
so it works for any base model, chat or not; and one forward pass per batch scores a fine-tune, not a generation.

`general_drop` is the mean over prompts of the base's probability minus the fine-tune's: how much probability the
fine-tune moved off the base's own answers. The gate decides on it, not on top-1 agreement, because the probability
moves smoothly: a near-tie that rounds the other way (bf16 against fp32, batched against single) flips a top-1 pick
but moves the probability by almost nothing. Scored per prompt, it is a paired difference over the same items, which
the gate decides on with its interval (`intervals.mean_interval` of the per-prompt drops).
"""

from __future__ import annotations

from pathlib import Path

import torch

from llm_engineering.evaluation.tail_logits import tail_logits
from llm_engineering.model.generation import end_ids, generate_ids, prompt_ids

GENERAL_PROMPTS = Path(__file__).with_name("general_prompts.jsonl")


def general_prompts(limit: int) -> list[list[dict]]:
    import json

    lines = GENERAL_PROMPTS.read_text(encoding="utf-8").splitlines()[:limit]
    return [json.loads(line)["messages"] for line in lines]


def base_answers(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int,
                 batch_size: int) -> list[dict]:
    """The model's greedy answers as token ids, the end token kept where it stopped: what later models are held to."""
    end = end_ids(model, tokenizer)[0]
    answers = generate_ids(model, tokenizer, conversations, max_new_tokens, batch_size)
    return [{"prompt": conversation[-1]["content"], "answer_ids": ids + ([end] if stopped else [])}
            for conversation, (ids, stopped) in zip(conversations, answers)]


@torch.no_grad()
def agreement(model, tokenizer, conversations: list[list[dict]], references: list[dict],
              batch_size: int = 16) -> list[dict]:
    """Per prompt, over the reference answer's tokens after the same prefix: `probability`, the mean probability the
    model gives each of them, and `agreement`, the share its top-1 picks."""
    model.eval()
    rows = [(prompt_ids(tokenizer, c), ref["answer_ids"]) for c, ref in zip(conversations, references)]
    answered = [(prompt, answer) for prompt, answer in rows if answer]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    logits = []
    for start in range(0, len(answered), batch_size):
        batch = answered[start: start + batch_size]
        logits += tail_logits(model, [p + a for p, a in batch], [len(a) for _, a in batch], pad)
    scored = iter(zip(answered, logits))
    scores = []
    for _, answer in rows:
        if not answer:  # nothing to hold the model to
            scores.append({"probability": 1.0, "agreement": 1.0})
            continue
        (_, answer), at = next(scored)
        target = torch.tensor(answer)
        probability = at.softmax(-1).gather(-1, target[:, None]).mean()
        picked = (at.argmax(-1) == target).float().mean()
        scores.append({"probability": float(probability), "agreement": float(picked)})
    return scores
