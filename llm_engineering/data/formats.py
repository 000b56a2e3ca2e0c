"""Dataset formats: detect which one a dataset uses and normalise every row to one internal form.

Internal form: `{"messages": [...], "tools": JSON text or None}` for everything conversational, or `{"text": str}` for
continued pre-training. A message is `{role, content, tool_calls, tool_call_id, weight}`: role system|user|assistant|
tool, content text, tool_calls JSON text of `[{id, type: function, function: {name, arguments: {...}}}]` (or None),
weight 1 (trained) or 0 (an assistant turn kept as context). JSON text keeps arbitrary tool schemas intact in Arrow.
Supported inputs:

  messages           OpenAI chat / fine-tuning rows: `messages` [{role, content}], content a string or typed parts
                     ([{type: text, text}]), assistant `tool_calls` and per-message `weight`, `tool` messages, and
                     the row's `tools`
  sharegpt           `conversations`: [{from: system|human|gpt|function_call|observation, value}] (+ `tools`), as
                     LLaMA-Factory writes them; function_call/observation become tool calls/results
  alpaca             `instruction`, optional `input`, `output` (and optional `system`)
  prompt_completion  `prompt`, `completion`: two strings, or two lists of messages (TRL's conversational form)
  text               `text`: plain text, every token trained

`data.columns` maps these canonical field names to the dataset's own column names. A row that cannot be normalised
gets a reason (missing field, unknown role, empty content, non-text content part, tool call arguments that are not
JSON, a weight other than 0/1, wrong turn order, no trained assistant turn): `normalise` raises RowProblem, which the
caller collects so that every bad row is reported at once.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Optional

FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion", "text")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "function_call": "assistant", "observation": "tool", "tool": "tool"}
ROLES = ("system", "user", "assistant", "tool")

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
        return {"text": _string(row, "text"), "messages": [], "tools": None}
    if fmt == "messages":
        messages = [_message(m, i, "role", "content", None) for i, m in enumerate(_list(row, "messages"))]
    elif fmt == "sharegpt":
        turns = _list(row, "conversations")
        messages = [_sharegpt_turn(m, i) for i, m in enumerate(turns)]
    elif fmt == "alpaca":
        messages = [_plain(m) for m in _alpaca(row)]
    elif fmt == "prompt_completion":
        messages = _prompt_completion(row)
    else:
        raise ValueError(f"unknown format {fmt!r}")
    check_turn_order(messages)
    return {"messages": messages, "tools": _tools(row.get("tools")), "text": None}


def chat_messages(messages: list[dict]) -> list[dict]:
    """Internal messages as chat templates take them: tool calls as objects, empty fields left out."""
    out = []
    for m in messages:
        message = {"role": m["role"], "content": m["content"]}
        if m.get("tool_calls"):
            message["tool_calls"] = json.loads(m["tool_calls"])
        if m.get("tool_call_id"):
            message["tool_call_id"] = m["tool_call_id"]
        out.append(message)
    return out


def row_tools(row: dict) -> Optional[list]:
    return json.loads(row["tools"]) if row.get("tools") else None


def check_turn_order(messages: list[dict]) -> None:
    """An optional system message first, then user and assistant alternating, ending with the assistant; an assistant
    turn with tool calls is followed by one or more tool results and then the assistant again."""
    if not messages:
        raise RowProblem("no messages")
    offset = 1 if messages[0]["role"] == "system" else 0
    turns = messages[offset:]
    allowed = ("user",)
    for i, message in enumerate(turns):
        if message["role"] not in allowed:
            expected = "' or '".join(allowed)
            raise RowProblem(f"wrong turn order: message {i + offset} is '{message['role']}', expected '{expected}' "
                             "(an optional system message, then user and assistant alternating; tool results "
                             "only after an assistant's tool calls)")
        if message["role"] == "user":
            allowed = ("assistant",)
        elif message["role"] == "assistant":
            allowed = ("tool",) if message["tool_calls"] else ("user",)
        else:
            allowed = ("tool", "assistant")
    assistants = [m for m in turns if m["role"] == "assistant"]
    if not assistants:  # also catches a system message alone
        raise RowProblem("no assistant turn (nothing to learn)")
    if turns[-1]["role"] != "assistant":
        raise RowProblem("the last message is not from the assistant (nothing to learn after it)")
    if not any(m["weight"] for m in assistants):
        raise RowProblem("every assistant message has weight 0 (nothing to learn)")


def _message(message: Any, index: int, role_key: str, content_key: str, role_names: Optional[dict]) -> dict:
    if not isinstance(message, dict):
        raise RowProblem(f"message {index} is not an object")
    role = message.get(role_key)
    allowed = role_names or {r: r for r in ROLES}
    if not isinstance(role, str) or role not in allowed:
        raise RowProblem(f"message {index} has unknown role {role!r} (allowed: {sorted(allowed)})")
    role = allowed[role]
    tool_calls = _tool_calls(message.get("tool_calls"), index) if role == "assistant" else None
    if content_key not in message and not tool_calls:
        raise RowProblem(f"message {index} has no '{content_key}'")
    content = _content(message.get(content_key), index)
    if not content.strip() and not tool_calls:
        raise RowProblem(f"message {index} has empty content")
    return {"role": role, "content": content, "tool_calls": tool_calls,
            "tool_call_id": _optional_string(message, "tool_call_id", index) if role == "tool" else None,
            "weight": _weight(message, index, role)}


def _content(content: Any, index: int) -> str:
    """A string, or OpenAI's typed parts: the text parts joined; any other part is refused."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            if kind != "text":
                raise RowProblem(f"message {index} content part {j} is of type {kind!r}: only text parts can be "
                                 "trained (remove image/audio/file parts or the row)")
            if not isinstance(part.get("text"), str):
                raise RowProblem(f"message {index} content part {j} has no 'text' string")
            texts.append(part["text"])
        return "".join(texts)
    raise RowProblem(f"message {index} content is {type(content).__name__}, not a string or a list of text parts")


def _weight(message: dict, index: int, role: str) -> int:
    if "weight" not in message or message["weight"] is None:
        return 1
    weight = message["weight"]
    if role != "assistant":
        raise RowProblem(f"message {index} ({role}) has a weight: only assistant messages are weighted")
    if isinstance(weight, bool) or weight not in (0, 1):
        raise RowProblem(f"message {index} weight is {weight!r}: it must be 0 (not trained) or 1 (trained)")
    return int(weight)


def _tool_calls(calls: Any, index: int) -> Optional[str]:
    """Validated tool calls as JSON text (arguments parsed to objects), or None."""
    if calls is None or calls == []:
        return None
    if isinstance(calls, str):
        calls = _json(calls, f"message {index} tool_calls")
    if isinstance(calls, dict):
        calls = [calls]
    if not isinstance(calls, list):
        raise RowProblem(f"message {index} tool_calls is {type(calls).__name__}, not a list")
    out = []
    for j, call in enumerate(calls):
        where = f"message {index} tool call {j}"
        function = call.get("function", call) if isinstance(call, dict) else None  # ShareGPT: {name, arguments}
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise RowProblem(f"{where} has no function name")
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            arguments = _json(arguments, f"{where} ({function['name']}) arguments")
        if not isinstance(arguments, dict):
            raise RowProblem(f"{where} ({function['name']}) arguments are {type(arguments).__name__}, not an object")
        entry = {"type": "function", "function": {"name": function["name"], "arguments": arguments}}
        if isinstance(call.get("id"), str):
            entry["id"] = call["id"]
        out.append(entry)
    return json.dumps(out, ensure_ascii=False)


def _tools(tools: Any) -> Optional[str]:
    """The row's tool definitions as JSON text, each `{type: function, function: {name, ...}}`, or None."""
    if tools is None or tools == [] or tools == "":
        return None
    if isinstance(tools, str):
        tools = _json(tools, "'tools'")
    if not isinstance(tools, list):
        raise RowProblem(f"'tools' is {type(tools).__name__}, not a list")
    out = []
    for j, tool in enumerate(tools):
        if isinstance(tool, dict) and "function" not in tool and "name" in tool:  # LLaMA-Factory: bare functions
            tool = {"type": "function", "function": tool}
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise RowProblem(f"tool {j} has no function name")
        out.append(tool)
    return json.dumps(out, ensure_ascii=False)


def _sharegpt_turn(turn: Any, index: int) -> dict:
    if isinstance(turn, dict) and turn.get("from") == "function_call":
        calls = _tool_calls(turn.get("value"), index)
        if calls is None:
            raise RowProblem(f"message {index} (function_call) has no call")
        return {"role": "assistant", "content": "", "tool_calls": calls, "tool_call_id": None, "weight": 1}
    return _message(turn, index, "from", "value", SHAREGPT_ROLES)


def _plain(message: dict) -> dict:
    return {**message, "tool_calls": None, "tool_call_id": None, "weight": 1}


def _optional_string(message: dict, key: str, index: int) -> Optional[str]:
    value = message.get(key)
    if value is not None and not isinstance(value, str):
        raise RowProblem(f"message {index} '{key}' is {type(value).__name__}, not a string")
    return value


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RowProblem(f"{what}: not valid JSON ({exc.msg} at character {exc.pos})") from None


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
        return [_plain({"role": "user", "content": _string(row, "prompt")}),
                _plain({"role": "assistant", "content": _string(row, "completion")})]
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
