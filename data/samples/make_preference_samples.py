"""Write the preference samples in the shapes exporters write them: python data/samples/make_preference_samples.py

  preference_ultrafeedback.jsonl  UltraFeedback-binarized rows: `prompt` a string, `chosen`/`rejected` whole
                                  conversations (the user turn repeated), score columns, a multi-turn row, typed
                                  content parts, a U+2028 inside a string
  preference_sharegpt.json        LLaMA-Factory's dpo_en_demo shape: `conversations` + `chosen`/`rejected` turns
  preference_pairs.csv            TRL's plain form (`prompt`, `chosen`, `rejected` strings), cells with quoted newlines
"""

import csv
import json
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


if __name__ == "__main__":
    main()
