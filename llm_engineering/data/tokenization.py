"""Template, tokenize and mask rows: `input_ids` plus `labels` with -100 on every token that is not trained.

A conversation is cut into pieces at assistant turns by rendering the template on growing prefixes: the text up to
the generation prompt is context, the assistant's reply up to and including its end-of-turn token is trained. Each
piece is tokenized on its own (all pieces of all rows in one batched call of the fast tokenizer), exactly as at
inference time, where the prompt is tokenized and the reply is generated after it. This needs no `{% generation %}`
markers in the template, and it trains every assistant turn of a multi-turn conversation, not only the last one.
Assistant turns with weight 0 (OpenAI's fine-tuning format) stay context; tool calls are part of the assistant turn and
trained with it, tool results are context. Rows with tools are rendered with the template's own tool support, and
refused when the template would drop the tools, the calls or the results.
"""

from __future__ import annotations

import copy

from dataclasses import dataclass
from typing import Optional

from llm_engineering.data.formats import RowProblem, chat_messages, row_tools
from llm_engineering.data.templates import fast_renderer, tool_support

IGNORE = -100


@dataclass(frozen=True)
class Tokenized:
    input_ids: Optional[list[int]]
    labels: Optional[list[int]]
    problem: Optional[str] = None  # why the row cannot be used (None: usable)
    truncated: bool = False


def pieces(row: dict, tokenizer, loss_on: str, render=None, support=None) -> list[tuple[str, bool]]:
    """The row's text as (piece, trained) in order; RowProblem when the template cannot render it consistently."""
    if not row.get("messages"):
        return [(row["text"] + tokenizer.eos_token, True)]
    render = render or fast_renderer(tokenizer)
    messages, tools = chat_messages(row["messages"]), row_tools(row)
    weights = [m.get("weight", 1) for m in row["messages"]]
    check_tool_support(messages, tools, support if support is not None else tool_support(render))
    try:
        out, done = [], ""
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = render(messages[:i], generation_prompt=True, tools=tools)
            answered = render(messages[: i + 1], tools=tools)
            if not prompt.startswith(done) or not answered.startswith(prompt):
                raise RowProblem(f"the chat template renders turn {i} differently once later turns are added, so "
                                 "its assistant tokens cannot be located")
            reply = answered[len(prompt):].rstrip()  # the newline after the end-of-turn token is context
            out += [(prompt[len(done):], loss_on == "all"), (reply, loss_on == "all" or weights[i] != 0)]
            done = prompt + reply
    except RowProblem:
        raise
    except Exception as exc:  # jinja's raise_exception and template errors: the template cannot render this row
        raise RowProblem(f"the chat template cannot render this row: {exc}") from None
    # validated rows end with the assistant, so the last `answered` was the whole conversation: nothing follows
    return [(text, trained) for text, trained in out if text]


def check_tool_support(messages: list[dict], tools, support: dict[str, bool]) -> None:
    used = {"tools": bool(tools), "tool_calls": any(m.get("tool_calls") for m in messages),
            "tool results": any(m["role"] == "tool" for m in messages)}
    missing = [part for part, present in used.items() if present and not support[part]]
    if missing:
        raise RowProblem(f"the chat template does not render {' or '.join(missing)}, so they would be dropped "
                         "from the training text; set model.chat_template: chatml-tools (or a template of your own "
                         "with tool support)")


def tokenize_rows(rows: list[dict], tokenizer, loss_on: str, max_length: int, truncate: bool) -> list[Tokenized]:
    cut: list[Optional[list[tuple[str, bool]]]] = []
    problems: list[Optional[str]] = []
    render = fast_renderer(tokenizer)
    support = tool_support(render)
    for row in rows:
        try:
            cut.append(pieces(row, tokenizer, loss_on, render, support))
            problems.append(None)
        except RowProblem as problem:
            cut.append(None)
            problems.append(str(problem))
    texts = [text for row_pieces in cut if row_pieces for text, _ in row_pieces]
    # the Rust tokenizer directly: one parallel batch, without building Python BatchEncodings
    ids = iter(e.ids for e in plain_backend(tokenizer).encode_batch(texts, add_special_tokens=False))
    results = []
    for row_pieces, problem in zip(cut, problems):
        if row_pieces is None:
            results.append(Tokenized(None, None, problem))
            continue
        input_ids, labels = [], []
        for _, trained in row_pieces:
            piece_ids = next(ids)
            input_ids += piece_ids
            labels += piece_ids if trained else [IGNORE] * len(piece_ids)
        results.append(fit_length(input_ids, labels, max_length, truncate))
    return results


def plain_backend(tokenizer):
    """The Rust tokenizer without padding or truncation. transformers 5 leaves `padding=True` of an earlier call
    enabled on the backend, and a batch encode would then pad every piece to the longest (pad tokens inside rows)."""
    backend = tokenizer.backend_tokenizer
    if backend.padding is None and backend.truncation is None:
        return backend
    backend = copy.deepcopy(backend)  # the caller's tokenizer stays as it is
    backend.no_padding()
    backend.no_truncation()
    return backend


def fit_length(input_ids: list[int], labels: list[int], max_length: int, truncate: bool) -> Tokenized:
    if len(input_ids) <= max_length:
        return Tokenized(input_ids, labels)
    if not truncate:
        return Tokenized(None, None, f"{len(input_ids)} tokens after templating, longer than train.max_length="
                                     f"{max_length} (raise it, or set data.truncate: true)")
    input_ids, labels = input_ids[:max_length], labels[:max_length]
    if all(label == IGNORE for label in labels):
        return Tokenized(None, None, f"no trained token left after truncation to train.max_length={max_length}")
    return Tokenized(input_ids, labels, truncated=True)
