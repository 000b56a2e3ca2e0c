"""The general-ability prompts (llm_engineering/evaluation/general_prompts.jsonl): 207 short everyday requests of
many kinds (facts, arithmetic, words, translation, how-to, explanations, writing), shuffled so that the first n
(`eval.regression.general_prompts`, 100 by default) mix every kind. The base model answers each once
(greedy, in the base evaluation) and the fine-tune is scored on how many of those answer tokens it still picks, so
the check needs no right answers and works for any base model. None of them is a regression probe or a replay
prompt (data/replay/make_replay.py): the fine-tune never trained on them.

    python data/general/make_general_prompts.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[2] / "llm_engineering" / "evaluation" / "general_prompts.jsonl"

COUNTRIES = ["Italy", "Spain", "Portugal", "China", "India", "Peru", "Chile", "Norway", "Sweden", "Greece",
             "Turkey", "Ireland", "Poland", "Austria", "Argentina", "Cuba", "Thailand", "Vietnam", "Morocco", "Ghana"]
LANGUAGES = ["French", "Spanish", "German", "Italian"]
PHRASES = ["good night", "see you tomorrow", "I am hungry", "where is the station", "my name is Anna"]
OPPOSITES = ["cold", "fast", "light", "happy", "old", "open", "loud", "rich", "wet", "strong", "full", "high"]
JOBS = ["nurse", "farmer", "pilot", "baker", "librarian", "firefighter", "architect", "plumber", "chef", "judge"]
THINGS = ["a volcano", "a battery", "democracy", "a calendar", "a bicycle", "electricity", "a map", "a vaccine",
          "a museum", "an orchestra", "a glacier", "a spreadsheet", "a compass", "a telescope", "recycling"]
CATEGORIES = ["vegetables", "musical instruments", "birds", "sports", "planets", "kitchen tools", "flowers",
              "board games", "European rivers", "metals"]
TASKS = ["plant a tree", "write a thank-you note", "save money each month", "learn a new language",
         "clean a laptop screen", "make pancakes", "remember names better", "start running", "fold a shirt",
         "prepare for a job interview"]
TOPICS = ["the ocean", "autumn", "a busy city", "teamwork", "the mountains", "a quiet morning", "music",
          "a good book", "the stars", "kindness"]
WORDS = ["big", "smart", "quick", "sad", "beautiful", "angry", "tired", "funny"]
PLURALS = ["foot", "tooth", "goose", "woman", "leaf", "knife"]
PASTS = ["eat", "run", "write", "swim", "think", "buy"]
QUESTIONS = [
    "Why is the sea salty?", "How far is the moon from the Earth?", "What causes thunder?",
    "Why do we have seasons?", "What is a leap year?", "How do bees make honey?", "What is an atom?",
    "Why do birds migrate?", "What is the freezing point of water in Fahrenheit?", "How many legs does a spider have?",
    "How many continents are there?", "What is the largest planet in our solar system?",
    "Who was Albert Einstein?", "What is a haiku?", "What is the difference between weather and climate?",
    "Why is sleep important?", "What is a prime number?", "What is the square root of 81?",
    "How many minutes are in an hour?", "What do you call a baby cat?",
]


def prompts(seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    out = [f"What is the capital of {c}?" for c in COUNTRIES]
    out += [f"What is {a} {op} {b}?" for a, op, b in ((rng.randint(2, 60), rng.choice(["plus", "minus", "times"]),
                                                       rng.randint(2, 12)) for _ in range(20))]
    out += [f"Translate '{p}' into {lang}." for p in PHRASES for lang in LANGUAGES]
    out += [f"What is the opposite of {w}?" for w in OPPOSITES]
    out += [f"What does a {j} do?" for j in JOBS]
    out += [f"Explain what {t} is in one sentence." for t in THINGS]
    out += [f"Name three {c}." for c in CATEGORIES]
    out += [f"How do I {t}?" for t in TASKS]
    out += [f"Write one sentence about {t}." for t in TOPICS]
    out += [f"Write a short poem about {t}." for t in TOPICS[:6]]
    out += [f"Give me a synonym for {w}." for w in WORDS]
    out += [f"What is the plural of {w}?" for w in PLURALS]
    out += [f"What is the past tense of {w}?" for w in PASTS]
    out += QUESTIONS
    out += [f"Give me two tips about {t}." for t in ["cooking rice", "studying", "travelling light", "gardening",
                                                      "public speaking", "drinking enough water"]]
    out += [f"Describe {t} in two sentences." for t in ["a forest", "a desert", "a train station", "a market",
                                                         "snow", "a library at night"]]
    out += [f"What is a good name for a {p}?" for p in ["cat", "goldfish", "bakery", "boat", "band", "robot"]]
    out += [f"Tell me something interesting about {a}." for a in ["elephants", "octopuses", "penguins", "owls",
                                                                   "dolphins", "ants"]]
    out += [f"Is {a} a fruit or a vegetable?" for a in ["a tomato", "a carrot", "a banana", "broccoli",
                                                        "an apple", "a potato"]]
    out += [f"Summarize the story of {s} in one sentence." for s in ["Snow White", "Little Red Riding Hood",
                                                                      "the Three Little Pigs", "Pinocchio"]]
    out = list(dict.fromkeys(out))  # once each
    rng.shuffle(out)  # any prefix (eval.regression.general_prompts takes the first n) mixes every kind
    return out


if __name__ == "__main__":
    rows = [{"messages": [{"role": "user", "content": p}]} for p in prompts()]
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"{len(rows)} prompts -> {OUT}")
