"""Write the sample datasets (one per supported format) from the built-in booking task: python data/samples/make_samples.py"""

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from llm_engineering.data.synthetic import booking_rows

HERE = Path(__file__).parent
ROWS = booking_rows(60, seed=7)


def turns(row):
    system, user, assistant = (m["content"] for m in row["messages"])
    return system, user, assistant


def main():
    with open(HERE / "messages.jsonl", "w") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS)
    sharegpt = [{"conversations": [{"from": "system", "value": s}, {"from": "human", "value": u},
                                   {"from": "gpt", "value": a}]} for s, u, a in map(turns, ROWS)]
    (HERE / "sharegpt.json").write_text(json.dumps(sharegpt, ensure_ascii=False, indent=1))
    with open(HERE / "alpaca.csv", "w", newline="") as f:  # columns named as a user's own export would be
        writer = csv.DictWriter(f, fieldnames=["task", "request", "answer"])
        writer.writeheader()
        writer.writerows({"task": s, "request": u, "answer": a} for s, u, a in map(turns, ROWS))
    prompt_completion = [{"prompt": f"{s}\n\n{u}", "completion": a} for s, u, a in map(turns, ROWS)]
    pq.write_table(pa.Table.from_pylist(prompt_completion), HERE / "prompt_completion.parquet")
    with open(HERE / "text.jsonl", "w") as f:
        f.writelines(json.dumps({"text": f"Request: {u}\nBooking: {a}"}, ensure_ascii=False) + "\n"
                     for _, u, a in map(turns, ROWS))


if __name__ == "__main__":
    main()
