"""Write the preference samples in the shapes exporters write them: python data/samples/make_preference_samples.py

  preference_ultrafeedback.jsonl  UltraFeedback-binarized rows: `prompt` a string, `chosen`/`rejected` whole
                                  conversations (the user turn repeated), score columns, a multi-turn row, typed
                                  content parts, a U+2028 inside a string
  preference_sharegpt.json        LLaMA-Factory's dpo_en_demo shape: `conversations` + `chosen`/`rejected` turns
  preference_pairs.csv            TRL's plain form (`prompt`, `chosen`, `rejected` strings), cells with quoted newlines
  preference_sharegpt_long.json   ShareGPT pairs whose prompts run long, as chat exports do: earlier exchanges about
                                  other things, a pasted e-mail thread (quoted lines, a U+2028, accents) before the
                                  request, and short rows between them
"""

import csv
import json
import random
from pathlib import Path

from llm_engineering.data.synthetic import SYSTEM_PROMPT, booking_preference_rows

HERE = Path(__file__).parent
ROWS = booking_preference_rows(36, seed=11)


def sides(row):
    return row["prompt"][1]["content"], row["chosen"][0]["content"], row["rejected"][0]["content"]


def main():
    with open(HERE / "preference_ultrafeedback.jsonl", "w", encoding="utf-8") as f:
        for i, row in enumerate(ROWS):
            user, chosen, rejected = sides(row)
            if i == 3:
                user += "\u2028(sent from my phone)"  # a line separator inside a JSON string, as exports keep it
            conversation = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]
            if i == 5:  # an earlier exchange before the prompt
                conversation[1:1] = [{"role": "user", "content": "Hi, can you help with a booking?"},
                                     {"role": "assistant", "content": "Of course. Send me the request."}]
            chosen_turn = {"role": "assistant", "content": chosen}
            if i == 7:
                chosen_turn["content"] = [{"type": "text", "text": chosen}]
            f.write(json.dumps({
                "prompt": user, "prompt_id": f"{i:08x}",
                "chosen": conversation + [chosen_turn],
                "rejected": conversation + [{"role": "assistant", "content": rejected}],
                "score_chosen": 9.0, "score_rejected": 3.5,
            }, ensure_ascii=False) + "\n")
    sharegpt = [{"conversations": [{"from": "human", "value": sides(row)[0]}],
                 "chosen": {"from": "gpt", "value": sides(row)[1]},
                 "rejected": {"from": "gpt", "value": sides(row)[2]},
                 "system": SYSTEM_PROMPT} for row in ROWS]
    (HERE / "preference_sharegpt.json").write_text(json.dumps(sharegpt, ensure_ascii=False, indent=1))
    with open(HERE / "preference_pairs.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["question", "good", "bad"])  # a user's own column names
        writer.writeheader()
        for row in ROWS:
            user, chosen, rejected = sides(row)
            writer.writerow({"question": f"{SYSTEM_PROMPT}\n\n{user}", "good": chosen, "bad": f"{rejected}\n"})


CHATTER = ["Can you recommend a good wine with fish?", "What time do most restaurants close on Sundays here?",
           "Is it rude to ask for the bill before dessert?", "How much should I tip for a group of eight?"]
ANSWERS = ["A dry white such as a Sauvignon Blanc or an Albariño goes well with most fish, and a light red like "
           "Pinot Noir with salmon or tuna. Ask the sommelier what is open by the glass.",
           "Many close their kitchens around 21:30 on Sundays, earlier in small towns; the bar often stays open "
           "longer. Checking the restaurant's own page is the safest.",
           "Not at all, especially if you have somewhere to be; a polite word to the waiter is enough.",
           "Around 10-15 % is usual; some restaurants add a service charge for groups, so check the bill first."]
EMAIL = ["> On Monday, Jana Dvořák wrote:",
         "> Hi all, are we still on for the team dinner? Ólafur can't do Thursday.",
         "> Also: Zoë is vegetarian and Mateusz doesn't eat nuts   please tell the restaurant.",
         "> Last time the place in town was too loud, let's pick somewhere calmer.",
         "> Budget is about 40 € a head, drinks included if possible.", "> -- sent from my phone",
         "Thanks Jana - I will sort the booking today. Forwarding the request below."]


def long_rows() -> list[dict]:
    """ShareGPT pairs whose prompts run long: every third row after two earlier exchanges, every third with a pasted
    e-mail thread before the request (a few hundred tokens), the rest as they come."""
    rng = random.Random(5)
    rows = []
    for i, row in enumerate(booking_preference_rows(30, seed=23)):
        user, chosen, rejected = sides(row)
        turns = []
        if i % 3 == 1:
            for question, answer in rng.sample(list(zip(CHATTER, ANSWERS)), 2):
                turns += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
        elif i % 3 == 2:
            thread = "\n".join(">" * depth + line for depth in range(rng.randint(2, 4), 0, -1) for line in EMAIL)
            user = f"Thanks Jana - I will sort the booking today.\n\n{thread}\n\n{user}"
        turns.append({"from": "human", "value": user})
        rows.append({"conversations": turns, "chosen": {"from": "gpt", "value": chosen},
                     "rejected": {"from": "gpt", "value": rejected}, "system": SYSTEM_PROMPT})
    return rows


if __name__ == "__main__":
    main()
    (HERE / "preference_sharegpt_long.json").write_text(json.dumps(long_rows(), ensure_ascii=False, indent=1))
