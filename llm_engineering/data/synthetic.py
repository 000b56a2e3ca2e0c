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
    "I'd like to book {restaurant} for {day} at {time}. We'll be {party}. The name is {name}.",
    "{day}, {time}, {restaurant}, {party} people - put it under {name}, thanks!",
    "Could you hold a table at {restaurant}? {name}, party of {party}, {day} {time}.",
    "We want dinner at {restaurant} on {day}. Time: {time}. Guests: {party}. Booking name {name}.",
    "hey can u book {restaurant} {day} {time} for {party}? name's {name}",
    "My name is {name} and I need a table for {party} on {day} at {time} at {restaurant}.",
]
# Requests composed from one phrase per field in a random order, so the model learns to find each field wherever it
# is and however it is phrased, not a handful of sentence templates (a third of the training rows; a third are
# TEMPLATES, a third SENTENCES below).
PHRASES = {
    "name": ["under the name {name}", "my name is {name}", "this is {name}", "name: {name}", "for {name}",
             "it's {name}", "booking name {name}", "{name} here", "the reservation is for {name}"],
    "party": ["a table for {party}", "{party} people", "party of {party}", "{party} guests", "we are {party}",
              "for {party} of us", "{party} in total"],
    "restaurant": ["at {restaurant}", "{restaurant}", "a table at {restaurant}", "restaurant: {restaurant}",
                   "into {restaurant}", "the place is {restaurant}"],
    "day": ["on {day}", "this {day}", "{day}", "next {day}", "day: {day}", "for {day}"],
    "time": ["at {time}", "around {time}", "{time}", "time: {time}", "by {time}", "from {time}"],
}
# Made-up names and restaurants for two thirds of the rows, so the model learns to copy them from the request rather
# than to pick from the lists above. Half are built from a few syllables, half letter by letter (consonant clusters,
# accents, apostrophes, double names): from syllables alone the model learned to compose names from them, and wrote
# "Hr" for Horvat and "Ahnor" for The Anchor.
SYLLABLES = ["ka", "lo", "mi", "ra", "ven", "tor", "sa", "bel", "ri", "dan", "mo", "ze", "lin", "gar", "ul", "fe",
             "no", "tash", "vi", "ost", "er", "ha", "pel", "quin"]
ONSETS = list("bcdfghjklmnprstvwz") + ["ch", "sh", "th", "st", "tr", "dr", "br", "kr", "gr", "sk", "vl", "zh", "pf",
                                       "kl", "sv", "bj"]
VOWELS = list("aeiouy") + ["ou", "ei", "ae", "é", "ö", "ü", "á", "ø", "ia"]
CODAS = ["n", "r", "s", "t", "k", "l", "m", "ng", "rt", "sson", "vic", "ez", "ov", "ah", "sk", "dt", "ski", "ra", "ini"]
NAME_SHAPES = ["{w}", "{w}", "{w}", "{w}", "O'{w}", "Mc{w}", "{w}-{w2}", "{w} {w2}", "de {w}"]
ADJECTIVES = ["Silver", "Red", "Little", "Hidden", "Royal", "Crooked", "Sunny", "Iron", "Velvet", "Wild"]
NOUNS = ["Spoon", "Candle", "Kettle", "Garden", "Table", "Oak", "Harbour", "Fig", "Compass", "Bell"]
RESTAURANT_SHAPES = ["The {adjective} {noun}", "{name}'s", "Chez {name}", "{noun} House", "{adjective} {noun} Bar",
                     "The {word}", "{word}", "{word} {word2}", "{word} Kitchen", "Café {word}", "Trattoria {word}",
                     "{word} Grill", "{noun} & {word}"]
# SENTENCES: requests in several sentences, as people write them when they greet, introduce themselves and ask: a
# greeting, a sentence with the name, a question with the restaurant, the party and the day, a sentence with the time,
# in varying order. Without them the model took a capitalised greeting or a whole question for the name, and "The X
# for five" for the restaurant, in multi-sentence requests (no shape or word of the evaluation's is used: test_data.py).
GREETINGS = ["Good morning!", "Good afternoon.", "Hello there!", "Hi!", "Morning!", "Greetings,", "Hey!", "Hello,",
             "Hi there.", "Dear team,"]
NAME_SENTENCES = ["{name} speaking.", "It's {name} here.", "My name's {name}.", "This is {name}.", "I'm {name}.",
                  "Put it down for {name}.", "The booking is under {name}.", "You can note it as {name}.",
                  "Please use the name {name}."]
ASK_SENTENCES = ["Do you have a table at {restaurant} for {party} on {day}?", "Could {restaurant} seat {party} of us "
                 "this {day}?", "Any chance of {restaurant} for {party} next {day}?", "We'd love a table for {party} "
                 "at {restaurant} on {day}.", "Is {restaurant} free on {day} for a group of {party}?", "We hope to "
                 "dine at {restaurant} on {day}, {party} of us.", "Have you got space for {party} at {restaurant} "
                 "on {day}?", "I want {restaurant} for {party} on {day}."]
TIME_SENTENCES = ["We'd arrive around {time}.", "Around {time} suits us.", "{time} would be ideal.", "We plan to be "
                  "there by {time}.", "Make it {time} if possible.", "The time we want is {time}.", "Say {time}?",
                  "We'll be there at {time}."]
OPENERS = ["", "Hi, ", "Hello! ", "Please book: ", "Reservation - ", "I'd like a booking, ", "hey ", "Dear team, "]
CLOSERS = [".", "!", "?", ", thanks.", " please.", ". Thank you!", ""]

# The evaluation set's own shapes, names and restaurants: never generated for training, so the task score measures
# whether the model learned the task, not the sentence templates (data/samples/booking_unseen.jsonl).
UNSEEN_NAMES = ["Chen", "Andersson", "O'Brien", "Fernández", "Yilmaz", "Mensah", "Horvat", "Sato", "Lefebvre",
                "Kaur"]
UNSEEN_RESTAURANTS = ["The Copper Pot", "Maison Rouge", "Taverna Eleni", "Green Lantern", "Pho Saigon",
                      "The Anchor"]
UNSEEN_TEMPLATES = [
    "Good evening! {name} calling. Is there room at {restaurant} for {party} on {day}? We'd come at {time}.",
    "Table for {party}, please, at {restaurant}, {time} on {day}; the reservation should be for {name}.",
    "For {day} I need {restaurant} at {time} - {party} diners, booked as {name}.",
    "{restaurant} on {day}, {party} persons, arriving {time}. Name on the booking: {name}.",
    "Quick one: {name}, {party} people, {restaurant}, {day}, {time}. Can you do it?",
]


def _written_time(hour: int, minute: int, rng: random.Random) -> str:
    """24-hour clock, written a few ways ("19:30", "19.30", "1930h"); the target is always "HH:MM"."""
    return rng.choice([f"{hour:02d}:{minute:02d}", f"{hour}.{minute:02d}", f"{hour:02d}{minute:02d}h"])


def _word(rng: random.Random) -> str:
    """A pronounceable made-up word, letter by letter (2-3 syllables, maybe a coda), capitalised."""
    word = "".join((rng.choice(ONSETS) if i or rng.random() < 0.7 else "") + rng.choice(VOWELS)
                   for i in range(rng.randint(2, 3)))
    return (word + (rng.choice(CODAS) if rng.random() < 0.6 else "")).capitalize()


def made_up_name(rng: random.Random) -> str:
    while True:
        if rng.random() < 0.5:
            name = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()
        else:
            name = rng.choice(NAME_SHAPES).format(w=_word(rng), w2=_word(rng))
        if name not in UNSEEN_NAMES:
            return name


# No word of an evaluation restaurant is used to make training ones.
_UNSEEN_WORDS = {word for name in UNSEEN_RESTAURANTS for word in name.split()} - {"The"}


def made_up_restaurant(rng: random.Random) -> str:
    while True:
        name = rng.choice(RESTAURANT_SHAPES).format(adjective=rng.choice(ADJECTIVES), noun=rng.choice(NOUNS),
                                                    name=made_up_name(rng), word=_word(rng), word2=_word(rng))
        if name not in UNSEEN_RESTAURANTS and not set(name.split()) & _UNSEEN_WORDS:
            return name


def booking_example(rng: random.Random, unseen: bool = False) -> tuple[str, dict]:
    """One (request sentence, target record) pair; `unseen`: from the evaluation set's shapes and names."""
    def pick(listed: list[str], unseen_list: list[str], made_up) -> str:
        if unseen:
            return rng.choice(unseen_list)
        return rng.choice(listed) if rng.random() < 1 / 3 else made_up(rng)

    templates = UNSEEN_TEMPLATES if unseen else TEMPLATES
    record = {
        "name": pick(NAMES, UNSEEN_NAMES, made_up_name),
        "party_size": rng.randint(1, 8),
        "restaurant": pick(RESTAURANTS, UNSEEN_RESTAURANTS, made_up_restaurant),
        "day": rng.choice(DAYS),
        "time": f"{rng.choice([11, 12, 13, 17, 18, 19, 20, 21]):02d}:{rng.choice([0, 0, 15, 30, 45]):02d}",
    }
    hour, minute = map(int, record["time"].split(":"))
    party = str(record["party_size"]) if rng.random() < 0.5 else NUMBER_WORDS[record["party_size"]]
    kind = "template" if unseen else rng.choice(["template", "phrases", "sentences"])
    template = rng.choice(templates) if kind == "template" else None
    values = dict(party=party, restaurant=record["restaurant"], day=record["day"],
                  time=_written_time(hour, minute, rng), name=record["name"])
    if template:
        return template.format(**values), record
    if kind == "sentences":
        return _sentences(values, rng), record
    fields = list(PHRASES)
    rng.shuffle(fields)
    body = ", ".join(rng.choice(PHRASES[field]).format(**values) for field in fields)
    return rng.choice(OPENERS) + body + rng.choice(CLOSERS), record


def _sentences(values: dict, rng: random.Random) -> str:
    """A request in several sentences: the name's and the time's sentences before or after the question."""
    sentences = [rng.choice(NAME_SENTENCES), rng.choice(TIME_SENTENCES)]
    rng.shuffle(sentences)
    cut = rng.randint(0, 2)
    sentences[cut:cut] = [rng.choice(ASK_SENTENCES)]
    greeting = [rng.choice(GREETINGS)] if rng.random() < 0.6 else []
    return " ".join(greeting + sentences).format(**values)


def booking_rows(num_rows: int, seed: int, unseen: bool = False) -> list[dict]:
    """Rows in the conversational `messages` form every source is normalised to."""
    rng = random.Random(seed)
    rows = []
    for _ in range(num_rows):
        sentence, record = booking_example(rng, unseen)
        rows.append({"messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": sentence},
            {"role": "assistant", "content": json.dumps(record, ensure_ascii=False)},
        ]})
    return rows


def typical_mistake(record: dict, rng: random.Random, copying_share: float = 0.5) -> str:
    """The record as a model that has not quite learned the task writes it: a copying mistake (`copying_share` of the
    time), the kind the SFT model still makes on names and restaurants it has never seen (on booking_unseen.jsonl:
    "Hr" for Horvat, "Ahnor" for The Anchor, the restaurant as the name); else one of the format mistakes base and
    briefly fine-tuned models make (12-hour time, the party size as text, a renamed or missing key, prose around the
    JSON, a lower-cased name)."""
    if rng.random() < copying_share:
        return json.dumps(copying_mistake(record, rng), ensure_ascii=False)
    wrong = dict(record)
    hour, minute = map(int, record["time"].split(":"))
    mistake = rng.randrange(7)
    if mistake == 0:
        wrong["time"] = f"{(hour - 1) % 12 + 1}:{minute:02d} {'PM' if hour >= 12 else 'AM'}"
    elif mistake == 1:
        wrong["party_size"] = NUMBER_WORDS.get(record["party_size"], str(record["party_size"]))
    elif mistake == 2:
        key = rng.choice(["party_size", "day", "restaurant"])
        renamed = {"party_size": "guests", "day": "date", "restaurant": "venue"}[key]
        wrong = {renamed if k == key else k: v for k, v in wrong.items()}
    elif mistake == 3:
        del wrong[rng.choice(["day", "time", "name"])]
    elif mistake == 4:
        return "Here is the booking: " + json.dumps(record, ensure_ascii=False)
    elif mistake == 5:
        wrong["name"] = record["name"].lower()
    else:
        wrong["time"] = f"{hour:02d}:{minute:02d}:00"
    return json.dumps(wrong, ensure_ascii=False)


def copying_mistake(record: dict, rng: random.Random) -> dict:
    """The record with the name or the restaurant not copied exactly: shortened, garbled, a word left out, or the
    restaurant put in the name. (Not a party size one off: a pair that differs in one digit taught DPO to avoid the
    small digits, and "party_size": 2 became 11 or 21.)"""
    wrong = dict(record)
    field = rng.choice(["name", "restaurant"])
    text = record[field]
    mistake = rng.randrange(4)
    if mistake == 0 and len(text) > 3:  # shortened to its first and last letters
        wrong[field] = text[0] + text[-1]
    elif mistake == 1 and len(text) > 4:  # a letter dropped from the middle
        cut = rng.randrange(1, len(text) - 2)
        wrong[field] = text[:cut] + text[cut + 1:]
    elif mistake == 2 and " " in text:  # a word of it left out
        words = text.split(" ")
        del words[rng.randrange(len(words))]
        wrong[field] = " ".join(words)
    else:
        wrong["name"] = record["restaurant"]
    return wrong


def booking_preference_rows(num_rows: int, seed: int, unseen: bool = False, copying_share: float = 0.5) -> list[dict]:
    """Preference pairs on the booking task, in TRL's conversational form: the exact record chosen, the same record
    with one typical mistake rejected (`copying_share` of them a copying mistake, the rest a format mistake)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(num_rows):
        sentence, record = booking_example(rng, unseen)
        rows.append({
            "prompt": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": sentence}],
            "chosen": [{"role": "assistant", "content": json.dumps(record, ensure_ascii=False)}],
            "rejected": [{"role": "assistant", "content": typical_mistake(record, rng, copying_share)}],
        })
    return rows


if __name__ == "__main__":  # python -m llm_engineering.data.synthetic > data/samples/booking_unseen.jsonl
    for row in booking_rows(100, seed=2026, unseen=True):
        print(json.dumps(row, ensure_ascii=False))
