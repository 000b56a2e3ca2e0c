"""Dataset formats: detect which one a dataset uses and normalise every row to one internal form.

Internal form: `{"messages": [{"role", "content"}, ...]}` (system?, then user/assistant turns ending with the
assistant) for everything conversational, or `{"text": str}` for continued pre-training. Supported inputs:

  messages           OpenAI style `messages`: [{role: system|user|assistant, content}]
  sharegpt           `conversations`: [{from: system|human|gpt, value}]
  alpaca             `instruction`, optional `input`, `output` (and optional `system`)
  prompt_completion  `prompt`, `completion`: two strings, or two lists of messages (TRL's conversational form)
  text               `text`: plain text, every token trained

`data.columns` maps these canonical field names to the dataset's own column names. A row that cannot be normalised
gets a reason (missing field, unknown role, empty content, wrong turn order, non-string value, no assistant turn):
`normalise` raises RowProblem, which the caller collects so that every bad row is reported at once.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Optional

FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion", "text")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
ROLES = ("system", "user", "assistant")

# Which columns give a format away, checked in this order.
SIGNATURES = (
    ("messages", {"messages"}),
    ("sharegpt", {"conversations"}),
    ("alpaca", {"instruction", "output"}),
    ("prompt_completion", {"prompt", "completion"}),
    ("text", {"text"}),
)


class RowProblem(ValueError):
    """Why one row cannot be trained on."""


def rename_columns(row: Any, columns: Mapping[str, str]) -> Any:
    """Expose the dataset's columns under the canonical names (`columns`: canonical -> dataset column)."""
    if not columns or not isinstance(row, dict):
        return row
    renamed = {k: v for k, v in row.items() if k not in columns.values()}
    renamed.update({canonical: row[column] for canonical, column in columns.items() if column in row})
    return renamed


def detect_format(rows: list[Any]) -> Optional[str]:
    """The format of the first row that is an object (None when no known columns are there)."""
    first = next((r for r in rows if isinstance(r, dict)), None)
    if first is None:
        return None
    return next((name for name, needed in SIGNATURES if needed <= first.keys()), None)


def normalise(row: Any, fmt: str) -> dict:
    """The row in internal form, or RowProblem naming what is wrong with it."""
    if not isinstance(row, dict):
        raise RowProblem(f"expected an object, found {type(row).__name__}")
    if fmt == "text":
        return {"text": _string(row, "text")}
    if fmt == "messages":
        messages = [_message(m, i, "role", "content", None) for i, m in enumerate(_list(row, "messages"))]
    elif fmt == "sharegpt":
        turns = _list(row, "conversations")
        messages = [_message(m, i, "from", "value", SHAREGPT_ROLES) for i, m in enumerate(turns)]
    elif fmt == "alpaca":
        messages = _alpaca(row)
    elif fmt == "prompt_completion":
        messages = _prompt_completion(row)
    else:
        raise ValueError(f"unknown format {fmt!r}")
    check_turn_order(messages)
    return {"messages": messages}


def check_turn_order(messages: list[dict]) -> None:
    """An optional system message first, then user and assistant alternating, ending with the assistant."""
    if not messages:
        raise RowProblem("no messages")
    offset = 1 if messages[0]["role"] == "system" else 0
    turns = messages[offset:]
    for i, message in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise RowProblem(f"wrong turn order: message {i + offset} is '{message['role']}', expected '{expected}' "
                             "(an optional system message, then user and assistant alternating)")
    if not any(m["role"] == "assistant" for m in turns):  # also catches a system message alone
        raise RowProblem("no assistant turn (nothing to learn)")
    if turns[-1]["role"] != "assistant":
        raise RowProblem("the last message is not from the assistant (nothing to learn after it)")


def _message(message: Any, index: int, role_key: str, content_key: str, role_names: Optional[dict]) -> dict:
    if not isinstance(message, dict):
        raise RowProblem(f"message {index} is not an object")
    role = message.get(role_key)
    allowed = role_names or {r: r for r in ROLES}
    if not isinstance(role, str) or role not in allowed:
        raise RowProblem(f"message {index} has unknown role {role!r} (allowed: {sorted(allowed)})")
    content = message.get(content_key)
    if content_key not in message:
        raise RowProblem(f"message {index} has no '{content_key}'")
    if not isinstance(content, str):
        raise RowProblem(f"message {index} content is {type(content).__name__}, not a string")
    if not content.strip():
        raise RowProblem(f"message {index} has empty content")
    return {"role": allowed[role], "content": content}


def _alpaca(row: dict) -> list[dict]:
    instruction, output = _string(row, "instruction"), _string(row, "output")
    extra = row.get("input") or ""
    if not isinstance(extra, str):
        raise RowProblem(f"'input' is {type(extra).__name__}, not a string")
    messages = [{"role": "system", "content": _string(row, "system")}] if row.get("system") else []
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return messages + [{"role": "user", "content": user}, {"role": "assistant", "content": output}]


def _prompt_completion(row: dict) -> list[dict]:
    prompt, completion = row.get("prompt"), row.get("completion")
    if isinstance(prompt, str) or isinstance(completion, str):
        return [{"role": "user", "content": _string(row, "prompt")},
                {"role": "assistant", "content": _string(row, "completion")}]
    turns = _list(row, "prompt") + _list(row, "completion")
    return [_message(m, i, "role", "content", None) for i, m in enumerate(turns)]


def _string(row: dict, key: str) -> str:
    if key not in row or row[key] is None:
        raise RowProblem(f"missing field '{key}'")
    value = row[key]
    if not isinstance(value, str):
        raise RowProblem(f"'{key}' is {type(value).__name__}, not a string")
    if not value.strip():
        raise RowProblem(f"'{key}' is empty")
    return value


def _list(row: dict, key: str) -> list:
    if key not in row or row[key] is None:
        raise RowProblem(f"missing field '{key}'")
    value = row[key]
    if isinstance(value, str) and value.lstrip().startswith("["):  # CSV cells hold lists as JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise RowProblem(f"'{key}' is not valid JSON: {exc.msg}") from None
    if not isinstance(value, list):
        raise RowProblem(f"'{key}' is {type(value).__name__}, not a list")
    if not value:
        raise RowProblem(f"'{key}' is empty")
    return value
