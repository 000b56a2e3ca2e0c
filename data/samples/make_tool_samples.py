"""Write data/samples/tools_openai.jsonl: booking requests answered through a `book_table` tool, in OpenAI's
fine-tuning chat format, with the parts real exports have (typed content parts, a weight-0 assistant turn, tool
results, arguments as JSON text, a U+2028 inside a string, non-ASCII names):  python data/samples/make_tool_samples.py"""

import json
import random
from pathlib import Path

from llm_engineering.data.synthetic import booking_rows

HERE = Path(__file__).parent
TOOLS = [
    {"type": "function", "function": {
        "name": "book_table", "description": "Reserve a restaurant table.",
        "parameters": {"type": "object", "required": ["name", "party_size", "restaurant", "day", "time"],
                       "properties": {"name": {"type": "string"}, "party_size": {"type": "integer"},
                                      "restaurant": {"type": "string"}, "day": {"type": "string"},
                                      "time": {"type": "string", "description": "HH:MM, 24h"}}}}},
    {"type": "function", "function": {
        "name": "list_restaurants", "description": "Restaurants open on a day.",
        "parameters": {"type": "object", "properties": {"day": {"type": "string"}}}}},
]


def row(i: int, booking: dict, rng: random.Random) -> dict:
    request = booking["messages"][1]["content"]
    fields = json.loads(booking["messages"][2]["content"])
    call_id = f"call_{i:03d}"
    user = [{"type": "text", "text": request}] if i % 3 == 0 else request  # typed parts in a third of the rows
    messages = [{"role": "system", "content": "You book restaurant tables with the tools you have."}]
    if i % 5 == 0:  # an earlier exchange kept as context only
        messages += [{"role": "user", "content": "Hi, can you help me with a reservation?"},
                     {"role": "assistant", "content": "Of course\u2028— tell me the details.", "weight": 0}]
    messages += [
        {"role": "user", "content": user},
        {"role": "assistant", "content": None, "tool_calls": [{"id": call_id, "type": "function", "function": {
            "name": "book_table", "arguments": json.dumps(fields, ensure_ascii=False)}}]},
        {"role": "tool", "tool_call_id": call_id,
         "content": json.dumps({"status": "confirmed", "booking_id": f"B{rng.randint(1000, 9999)}"})},
        {"role": "assistant", "content": f"Booked: {fields['restaurant']}, {fields['day']} at {fields['time']} "
                                         f"for {fields['party_size']}, under {fields['name']}.", "weight": 1},
    ]
    return {"messages": messages, "tools": TOOLS}


def main():
    rng = random.Random(11)
    rows = [row(i, b, rng) for i, b in enumerate(booking_rows(40, seed=11))]
    with open(HERE / "tools_openai.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


if __name__ == "__main__":
    main()
