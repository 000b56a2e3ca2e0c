"""Replay rows: the base model's own answers to general prompts, mixed into the training data so that a fine-tune
on one narrow task keeps answering everything else as the base model did (a known remedy for catastrophic
forgetting). Generated once per base model and kept as a JSONL file that a `data.sources` entry names:

    python data/replay/make_replay.py --out data/replay/smollm2-135m-instruct.jsonl

For preference tuning the same rows become pairs (no model needed): the base model's answer chosen, a booking record
rejected, which is what a model tuned on booking pairs alone answers to everything:

    python data/replay/make_replay.py --pairs-from data/replay/smollm2-135m-instruct.jsonl \
        --out data/replay/smollm2-135m-instruct-pairs.jsonl

The prompts are general chat requests, none of them a regression probe (llm_engineering/evaluation/probes.jsonl), so
the probes stay a test the fine-tune has not seen. Only answers that ended on their own (EOS) are kept: a cut-off
answer trained with an end-of-turn would teach the model to stop mid-sentence. A maker of data files, beside them (as
data/samples/make_*.py), not part of the library the data stage imports.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PROMPTS = [
    "Who are you?", "Hello! How are you today?", "What can you help me with?", "Tell me a fun fact.",
    "What is the capital of Canada?", "What is the capital of Australia?", "What is the capital of Kenya?",
    "What is 6 plus 7?", "What is 9 times 3?", "What is 20 divided by 4?", "What is 15 minus 8?",
    "Give me three tips for better sleep.", "How do I boil an egg?", "What is photosynthesis?",
    "Explain what a computer is in one sentence.", "What is the weather usually like in summer?",
    "Name three fruits.", "Name three colors.", "What is a noun?", "What is the opposite of big?",
    "What is the opposite of early?", "Write a short poem about the sea.", "Give me a synonym for happy.",
    "What does a doctor do?", "What does a teacher do?", "Why is exercise good for you?",
    "How many sides does a triangle have?", "How many sides does a square have?", "What is the sun?",
    "What is the moon?", "Why do leaves fall in autumn?", "What is rain?", "What do cats like to eat?",
    "What is a healthy breakfast?", "Translate 'thank you' into French.", "Translate 'good morning' into German.",
    "What is the plural of child?", "What is the past tense of go?", "Summarize the story of Cinderella.",
    "What is the internet?", "How do plants grow?", "What is gravity?", "What language is spoken in Mexico?",
    "What language is spoken in Japan?", "Which animal is known as the king of the jungle?",
    "What is the biggest animal on Earth?", "How many months are in a year?", "What season comes after winter?",
    "Write one sentence about friendship.", "Suggest a name for a pet dog.", "What is a recipe?",
    "Can you tell me a joke?", "What is the difference between a city and a village?",
    "Give me a word that rhymes with cat.", "What is 100 plus 1?", "How can I be more productive?",
    "What is a library?", "Describe a rainbow.", "What is the speed of light, roughly?",
    "Please explain what JSON is.", "What is a restaurant?", "How do I make a cup of tea?",
]


def replay_rows(model, tokenizer, prompts: list[str], max_new_tokens: int = 160, batch_size: int = 16) -> list[dict]:
    """`messages` rows of each prompt and the model's greedy answer (only answers that ended by themselves)."""
    from llm_engineering.model.generation import generate

    conversations = [[{"role": "user", "content": p}] for p in prompts]
    answers = generate(model, tokenizer, conversations, max_new_tokens, batch_size)
    return [{"messages": c + [{"role": "assistant", "content": text.strip()}]}
            for c, (text, stopped) in zip(conversations, answers) if stopped and text.strip()]


def replay_pairs(rows: list[dict], seed: int = 0) -> list[dict]:
    """Preference pairs from replay rows: the base model's own answer chosen, a booking record rejected (ORPO on
    booking pairs alone answered "How many days are in a week?" with "The booking is for Saturday, at 11:15, for 1."
    and lost 73 % of the regression probes)."""
    import random

    from llm_engineering.data.synthetic import booking_example

    rng = random.Random(seed)
    return [{"prompt": row["messages"][:-1], "chosen": row["messages"][-1:],
             "rejected": [{"role": "assistant", "content": json.dumps(booking_example(rng)[1], ensure_ascii=False)}]}
            for row in rows]


def main(argv=None) -> int:
    from llm_engineering.config import ModelConfig
    from llm_engineering.model.loading import load_model, load_tokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--pairs-from", type=Path, help="a replay file to turn into preference pairs (no model)")
    parser.add_argument("--model", default="embedded", help="embedded, or a local checkpoint directory")
    parser.add_argument("--max-new-tokens", type=int, default=160)
    args = parser.parse_args(argv)
    if args.pairs_from:
        rows = [json.loads(line) for line in args.pairs_from.read_text().splitlines() if line.strip()]
        args.out.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in replay_pairs(rows)))
        print(f"{args.out}: {len(rows)} pairs from {args.pairs_from}")
        return 0
    cfg = ModelConfig() if args.model == "embedded" else ModelConfig(source="local", name_or_path=args.model)
    model, tokenizer = load_model(cfg, quantize=False, dtype="float32"), load_tokenizer(cfg)
    rows = replay_rows(model, tokenizer, PROMPTS, args.max_new_tokens)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"{args.out}: {len(rows)} of {len(PROMPTS)} prompts answered within {args.max_new_tokens} tokens")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
