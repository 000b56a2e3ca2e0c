"""Preference rows (a prompt, a chosen and a rejected response) for DPO and ORPO: read, normalise, validate, template
and tokenize, with every bad row named before any model loads.

Internal form: `{"prompt": [messages], "chosen": [messages], "rejected": [messages]}`, messages `{role, content}`,
the prompt ending with the user, the responses the assistant's: the conversational form TRL's preference trainers
take. Supported inputs:

  preference           TRL's form: `chosen`, `rejected` and a `prompt`, all strings or all message lists; or, without
                       `prompt` (or with it, as UltraFeedback writes it), `chosen` and `rejected` as whole
                       conversations that share the prompt
  sharegpt_preference  LLaMA-Factory's: `conversations` [{from, value}] (the prompt), `chosen` and `rejected` each a
                       {from: gpt, value} turn (or a string), optional `system`

Tokenization is the trainer's: the prompt rendered with the generation prompt, prompt + response rendered whole, the
response being what follows their common prefix. A row is refused when a side is missing or empty, when the two
responses are the same, when it has tool calls (not supported in preference rows yet), and when prompt + response is
longer than `train.max_length`, unless `data.truncate`: then the prompt is cut from its start, as LLaMA-Factory shares
the length budget, so that the longer response fits (earlier turns go first, then the start of the earliest message
kept; the prompt keeps at least half the budget, and a response longer than the rest is cut at its end by the
trainer), and the row is counted as truncated. Without `data.truncate`, a prompt that alone fills `train.max_length`
is refused too (nothing of the responses would be left to compare).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Optional

from llm_engineering.data.formats import RowProblem, SHAREGPT_ROLES, _content, _list
from llm_engineering.data.prepare import RowKind, parse_rows
from llm_engineering.data.templates import fast_renderer

PREFERENCE_FORMATS = ("preference", "sharegpt_preference")
ROLES = ("system", "user", "assistant")


def detect_preference_format(row: Any) -> Optional[str]:
    if not isinstance(row, dict) or not {"chosen", "rejected"} <= row.keys():
        return None
    return "sharegpt_preference" if "conversations" in row else "preference"


def normalise_preference(row: Any, fmt: str) -> dict:
    """The row in internal form, or RowProblem naming what is wrong with it."""
    if not isinstance(row, dict):
        raise RowProblem(f"expected an object, found {type(row).__name__}")
    for side in ("chosen", "rejected"):
        if row.get(side) is None:
            raise RowProblem(f"missing field '{side}'")
    if row.get("tools"):
        raise RowProblem("'tools': tool definitions are not supported in preference rows yet")
    if fmt == "sharegpt_preference":
        prompt = [_message(m, f"conversations[{i}]", SHAREGPT_ROLES) for i, m in enumerate(_list(row, "conversations"))]
        if row.get("system"):
            prompt = [{"role": "system", "content": _text(row["system"], "'system'")}] + prompt
        chosen, rejected = (_sharegpt_response(row[side], side) for side in ("chosen", "rejected"))
    elif fmt == "preference":
        prompt, chosen, rejected = _trl_sides(row)
    else:
        raise ValueError(f"unknown preference format {fmt!r}")
    _check_prompt(prompt)
    if _texts(chosen) == _texts(rejected):
        raise RowProblem("'chosen' and 'rejected' are the same response (nothing to prefer)")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _trl_sides(row: dict) -> tuple[list, list, list]:
    chosen, rejected, prompt = row["chosen"], row["rejected"], row.get("prompt")
    if isinstance(chosen, str) and isinstance(rejected, str):
        if prompt is None:
            raise RowProblem("missing field 'prompt' ('chosen' and 'rejected' are strings, so the prompt is needed)")
        prompt = [{"role": "user", "content": _text(prompt, "'prompt'")}] if isinstance(prompt, str) else \
            _messages(prompt, "prompt")
        return prompt, [_assistant(chosen, "'chosen'")], [_assistant(rejected, "'rejected'")]
    chosen, rejected = _messages(chosen, "chosen"), _messages(rejected, "rejected")
    # whole conversations: the prompt is what precedes the assistant's closing turns, and both must share it
    chosen_prompt, chosen = _split_conversation(chosen, "chosen")
    rejected_prompt, rejected = _split_conversation(rejected, "rejected")
    if chosen_prompt and rejected_prompt and chosen_prompt != rejected_prompt:
        raise RowProblem("'chosen' and 'rejected' hold different conversations before their responses")
    shared = chosen_prompt or rejected_prompt
    if prompt is None:
        if not shared:
            raise RowProblem("missing field 'prompt' (and 'chosen' holds no conversation to take it from)")
        return shared, chosen, rejected
    given = [{"role": "user", "content": _text(prompt, "'prompt'")}] if isinstance(prompt, str) else \
        _messages(prompt, "prompt")
    if shared and shared != given and not (isinstance(prompt, str) and shared[-1] == given[0]):
        raise RowProblem("'prompt' differs from the conversation 'chosen' starts with")
    return (shared or given), chosen, rejected


def _split_conversation(messages: list[dict], side: str) -> tuple[list[dict], list[dict]]:
    end = len(messages)
    while end and messages[end - 1]["role"] == "assistant":
        end -= 1
    if end == len(messages):
        raise RowProblem(f"'{side}' does not end with an assistant response")
    return messages[:end], messages[end:]


def _sharegpt_response(value: Any, side: str) -> list[dict]:
    if isinstance(value, str):
        return [_assistant(value, f"'{side}'")]
    if isinstance(value, list):
        messages = [_message(m, f"{side}[{i}]", SHAREGPT_ROLES) for i, m in enumerate(value)]
    else:
        messages = [_message(value, side, SHAREGPT_ROLES)]
    if any(m["role"] != "assistant" for m in messages):
        raise RowProblem(f"'{side}' must be the assistant's (from: gpt) response")
    return messages


def _messages(value: Any, side: str) -> list[dict]:
    return [_message(m, f"{side}[{i}]", None) for i, m in enumerate(_list({side: value}, side))]


def _message(message: Any, where: str, role_names: Optional[dict]) -> dict:
    if not isinstance(message, dict):
        raise RowProblem(f"{where} is not an object")
    role_key, content_key = ("from", "value") if role_names else ("role", "content")
    role = message.get(role_key)
    allowed = role_names or {r: r for r in ROLES}
    if role in ("function_call", "observation", "tool") or message.get("tool_calls"):
        raise RowProblem(f"{where}: tool calls and results are not supported in preference rows yet")
    if not isinstance(role, str) or role not in allowed:
        raise RowProblem(f"{where} has unknown role {role!r} (allowed: {sorted(allowed)})")
    try:
        content = _content(message.get(content_key), 0)
    except RowProblem as problem:
        raise RowProblem(f"{where}: {str(problem).removeprefix('message 0 ')}") from None
    return {"role": allowed[role], "content": _text(content, where)}


def _assistant(text: Any, where: str) -> dict:
    return {"role": "assistant", "content": _text(text, where)}


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise RowProblem(f"{where} is {type(value).__name__}, not a string")
    if not value.strip():
        raise RowProblem(f"{where} is empty")
    return value


def _texts(messages: list[dict]) -> list[str]:
    return [m["content"].strip() for m in messages]


def _check_prompt(prompt: list[dict]) -> None:
    offset = 1 if prompt and prompt[0]["role"] == "system" else 0
    turns = prompt[offset:]
    if not turns:
        raise RowProblem("the prompt has no user message")
    for i, message in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise RowProblem(f"wrong turn order in the prompt: message {i + offset} is '{message['role']}', expected "
                             f"'{expected}' (an optional system message, then user and assistant alternating, "
                             "ending with the user)")
    if turns[-1]["role"] != "user":
        raise RowProblem("the prompt does not end with a user message")


def tokenize_pairs(rows: list[dict], tokenizer, max_length: int, truncate: bool) -> list[dict]:
    """Per row: prompt/chosen/rejected token ids as the preference trainer forms them, or the row's problem."""
    render = fast_renderer(tokenizer)
    texts, unrenderable = [], {}
    for i, row in enumerate(rows):
        try:
            texts += [render(row["prompt"], generation_prompt=True), render(row["prompt"] + row["chosen"]),
                      render(row["prompt"] + row["rejected"])]
        except Exception as exc:  # jinja's raise_exception and template errors
            texts += ["", "", ""]
            unrenderable[i] = f"the chat template cannot render this row: {exc}"
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    out = []
    for i, row in enumerate(rows):
        prompt, chosen, rejected = ids[3 * i: 3 * i + 3]
        cut, longest = _split(prompt, chosen, rejected)
        problem, shortened = unrenderable.get(i), None
        if not problem and truncate and longest > max_length:
            budget = max(max_length - (longest - cut), max_length // 2)
            shortened = _shortened_prompt(row, render, tokenizer, budget)
            if shortened is None:
                problem = (f"the prompt is {cut} tokens and cannot be cut to {budget} (train.max_length={max_length}): "
                           "its system message alone is longer")
            else:
                prompt, chosen, rejected = _pair_ids(shortened, row, render, tokenizer)
                cut, longest = _split(prompt, chosen, rejected)
        if problem:
            pass
        elif cut >= max_length:
            problem = (f"the prompt alone is {cut} tokens, train.max_length={max_length}: nothing of the responses "
                       "would be trained (data.truncate: true cuts the prompt from its start)")
        elif longest > max_length and not truncate:
            problem = (f"{longest} tokens after templating, more than train.max_length={max_length} (set "
                       "data.truncate: true to cut it)")
        out.append({"prompt_ids": prompt[:cut], "chosen_ids": chosen[cut:], "rejected_ids": rejected[cut:],
                    "length": longest, "truncated": shortened is not None or longest > max_length,
                    "problem": problem, "prompt": shortened})
    return out


def _split(prompt: list[int], chosen: list[int], rejected: list[int]) -> tuple[int, int]:
    """Where the responses start (the prompt's tokens both sides share) and the longer side's length."""
    return min(_common_prefix(prompt, chosen), _common_prefix(prompt, rejected)), max(len(chosen), len(rejected))


def _pair_ids(prompt: list[dict], row: dict, render, tokenizer) -> list[list[int]]:
    texts = [render(prompt, generation_prompt=True), render(prompt + row["chosen"]), render(prompt + row["rejected"])]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def _prompt_length(prompt: list[dict], render, tokenizer) -> int:
    return len(tokenizer(render(prompt, generation_prompt=True), add_special_tokens=False)["input_ids"])


def _shortened_prompt(row: dict, render, tokenizer, budget: int) -> Optional[list[dict]]:
    """`row`'s prompt cut from its start to at most `budget` tokens: whole earlier exchanges (a user turn and the
    answer to it) first, then the start of the earliest message kept, so the turns nearest the answer stay. None when
    the system message leaves no room for any of the last user message."""
    prompt = [dict(m) for m in row["prompt"]]
    system = prompt[:1] if prompt[0]["role"] == "system" else []
    turns = prompt[len(system):]
    while len(turns) > 1 and _prompt_length(system + turns, render, tokenizer) > budget:
        turns = turns[2:]  # the earliest user turn and the answer to it: the prompt still ends with the user
    for attempt in range(4):  # a cut text can tokenize a little longer than the tokens kept: cut a bit more
        excess = _prompt_length(system + turns, render, tokenizer) - budget
        if excess <= 0:
            return system + turns
        pieces = tokenizer(turns[0]["content"], add_special_tokens=False)["input_ids"]
        kept = tokenizer.decode(pieces[excess + 1 + 2 * attempt:]).lstrip().lstrip("\ufffd")  # no split character
        if not kept:
            return None
        turns[0] = {**turns[0], "content": "…" + kept}
    return None


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def process_preference_batch(batch: dict, tokenizer, format: str, columns: dict, max_length: int, truncate: bool,
                             **_) -> dict:
    """JSON rows -> normalised, tokenized preference rows (a `problem` instead for a bad row)."""
    normalised, problems = parse_rows(batch["row"], columns, lambda row: normalise_preference(row, format))
    tokenized = iter(tokenize_pairs([r for r in normalised if r is not None], tokenizer, max_length, truncate))
    out = {k: [] for k in ("prompt", "chosen", "rejected", "length", "trained_tokens", "truncated", "row_hash",
                           "problem")}
    for row, problem in zip(normalised, problems):
        result = next(tokenized) if row is not None else None
        problem = problem or (result["problem"] if result else None)
        ok = problem is None
        if ok and result["prompt"] is not None:
            row = {**row, "prompt": result["prompt"]}  # cut to fit (data.truncate): what the trainer is given
        for side in ("prompt", "chosen", "rejected"):
            out[side].append(row[side] if ok else [])
        out["length"].append(result["length"] if ok else 0)
        out["trained_tokens"].append(len(result["chosen_ids"]) + len(result["rejected_ids"]) if ok else 0)
        out["truncated"].append(bool(ok and result["truncated"]))
        out["row_hash"].append(_pair_hash(row, result) if ok else 0)
        out["problem"].append(problem)
    return out


def preference_features():
    from datasets import Features, Value

    message = [{"role": Value("string"), "content": Value("string")}]
    return Features({"location": Value("string"), "prompt": message, "chosen": message, "rejected": message,
                     "length": Value("int32"), "trained_tokens": Value("int32"), "truncated": Value("bool"),
                     "row_hash": Value("int64"), "problem": Value("string")})


def _pair_hash(row: dict, tokens: dict) -> int:
    digest = hashlib.blake2b(json.dumps(row, sort_keys=True, ensure_ascii=False).encode(), digest_size=8)
    for side in ("prompt_ids", "chosen_ids", "rejected_ids"):
        digest.update(json.dumps(tokens[side]).encode())
    return int.from_bytes(digest.digest(), "little", signed=True)


PREFERENCE_ROWS = RowKind("preference", PREFERENCE_FORMATS, detect_preference_format, process_preference_batch,
                          preference_features)


def chosen_conversations(pairs, tokenizer, max_length: int, truncate: bool = False):
    """Each pair as the SFT row of its chosen answer (prompt + chosen, templated, tokenized and masked as SFT rows
    are), so the merge check and the evaluation score the behaviour the pairs prefer, with the SFT pipeline's code.
    `truncate` as the dataset step had it: a pair it accepted, cut to fit, is cut here the same way."""
    from datasets import Dataset

    from llm_engineering.data.prepare import INTERNAL_COLUMNS, process_batch, sft_features

    rows = pairs.to_list() if hasattr(pairs, "to_list") else list(pairs)
    texts = [json.dumps({"messages": row["prompt"] + row["chosen"]}, ensure_ascii=False) for row in rows]
    out = process_batch({"row": texts}, tokenizer, "messages", {}, "assistant", max_length, truncate=truncate)
    out["location"] = [row.get("location") for row in rows]
    for location, problem in zip(out["location"], out["problem"]):
        if problem:  # a validated pair's prompt + chosen always fits: this is a bug, not bad data
            raise ValueError(f"{location}: the chosen conversation of a valid pair failed: {problem}")
    return Dataset.from_dict(out, features=sft_features()).remove_columns(INTERNAL_COLUMNS)


def check_rows_match_pipeline(data, pipeline: str) -> None:
    """Before any step runs: preference pairs go to the preference pipeline and SFT rows to finetune (DataError
    naming the source and the pipeline to use instead)."""
    from llm_engineering.data.formats import rename_columns
    from llm_engineering.data.sources import DataError, peek_rows

    want_pairs = pipeline == "preference"
    for src in data.source_list():
        if src.source == "synthetic":
            pairs = src.task == "booking_preference"
        elif src.format != "auto":
            pairs = src.format in PREFERENCE_FORMATS
        else:
            rows = [r for r in peek_rows(src, 1) if isinstance(r, dict)]
            if not rows:
                continue  # not on this machine (or a hub dataset): the dataset step reads and checks it
            pairs = detect_preference_format(rename_columns(rows[0], src.columns)) is not None
        if pairs != want_pairs:
            what = "preference pairs (chosen/rejected)" if pairs else "SFT rows (no chosen/rejected)"
            other = "pipelines.preference.preference" if pairs else "pipelines.finetune.finetune"
            raise DataError(f"data source {src.name}: holds {what}, which the {pipeline} pipeline does not train on; "
                            f"run {other}" + ("" if pairs else " (or set data.task: booking_preference / a "
                                                               "preference format)"))
