"""The built-in task: turn a free-form restaurant booking request into a fixed 5-field JSON object.

Deterministic for a seed. A small instruct model knows roughly what JSON is but not this exact shape (key names, 24-hour
time, integer party size), so its exact-match score starts near zero and a few minutes of LoRA training lift it close
to 100 %: a run shows, in one number, whether fine-tuning worked.
"""

from __future__ import annotations

import json
import random

SYSTEM_PROMPT = "Extract the booking as JSON with keys name, party_size, restaurant, day, time."

NAMES = ["Smith", "Garcia", "Nguyen", "Müller", "Okafor", "Rossi", "Kowalski", "Tanaka", "Dubois", "Haddad",
         "Johansson", "Silva", "Kim", "Novak", "Murphy", "Patel", "Lopez", "Cohen", "Ivanova", "Brown"]
RESTAURANTS = ["Luigi's", "The Blue Door", "Sakura House", "Casa Verde", "Le Petit Jardin", "The Golden Fork",
               "Spice Route", "Harbor Grill", "Olive Tree", "Noodle Bar", "The Old Mill", "Bella Napoli"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight"}
TEMPLATES = [
    "Book a table for {party} at {restaurant} on {day} at {time} under the name {name}.",
    "Hi, this is {name}. Could I reserve a table for {party} at {restaurant} this {day}, {time}?",
    "{name} here - we are {party} people and would like {restaurant} on {day} around {time}.",
    "Please make a reservation at {restaurant} for {party} guests, {day} {time}, name: {name}.",
    "Can you get us into {restaurant} on {day}? {party} of us, {time}. It's under {name}.",
    "Reservation request: {restaurant}, {day} at {time}, party of {party}, contact {name}.",
]


def _written_time(hour: int, minute: int, rng: random.Random) -> str:
    """24-hour clock, written a few ways ("19:30", "19.30", "1930h"); the target is always "HH:MM"."""
    return rng.choice([f"{hour:02d}:{minute:02d}", f"{hour}.{minute:02d}", f"{hour:02d}{minute:02d}h"])


def booking_example(rng: random.Random) -> tuple[str, dict]:
    """One (request sentence, target record) pair."""
    record = {
        "name": rng.choice(NAMES),
        "party_size": rng.randint(1, 8),
        "restaurant": rng.choice(RESTAURANTS),
        "day": rng.choice(DAYS),
        "time": f"{rng.choice([11, 12, 13, 17, 18, 19, 20, 21]):02d}:{rng.choice([0, 0, 15, 30, 45]):02d}",
    }
    hour, minute = map(int, record["time"].split(":"))
    party = str(record["party_size"]) if rng.random() < 0.5 else NUMBER_WORDS[record["party_size"]]
    sentence = rng.choice(TEMPLATES).format(
        party=party, restaurant=record["restaurant"], day=record["day"],
        time=_written_time(hour, minute, rng), name=record["name"],
    )
    return sentence, record


def booking_rows(num_rows: int, seed: int) -> list[dict]:
    """Rows in the conversational `messages` form every source is normalised to."""
    rng = random.Random(seed)
    rows = []
    for _ in range(num_rows):
        sentence, record = booking_example(rng)
        rows.append({"messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": sentence},
            {"role": "assistant", "content": json.dumps(record, ensure_ascii=False)},
        ]})
    return rows
