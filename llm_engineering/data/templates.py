"""Chat templates: the tokenizer's own, a built-in one by name, or a Jinja file, checked before training.

The chosen template is set on the tokenizer, so training, evaluation, the merge check and the exported tokenizer all
render conversations the same way. A template must close an assistant turn with one token the model can learn to
emit (its end-of-turn token); that token becomes the tokenizer's EOS so that generation stops on it, as it does in
LLaMA-Factory. A template that would make the model unable to stop is refused.
"""

from __future__ import annotations

from pathlib import Path

CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA_3 = (
    "{{ bos_token }}{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
# Mistral-Instruct v0.1: no system role (the original template raises on one as well).
MISTRAL = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
    "{% elif m['role'] == 'assistant' %}{{ m['content'] + eos_token }}"
    "{% else %}{{ raise_exception('the mistral template has no ' + m['role'] + ' role') }}{% endif %}{% endfor %}"
)
ALPACA = (
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\\n\\n' }}"
    "{% else %}{{ 'Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\\n\\n' }}{% endif %}"
    "{% for m in messages %}{% if m['role'] == 'user' %}{{ '### Instruction:\\n' + m['content'] + '\\n\\n' }}"
    "{% elif m['role'] == 'assistant' %}{{ '### Response:\\n' + m['content'] + eos_token + '\\n\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}"
)
# ChatML with tools as Hermes / Qwen2.5 render them: definitions in the system turn inside <tools>, calls as
# <tool_call>{"name", "arguments"}</tool_call> in the assistant turn, results as <tool_response> in a user turn.
CHATML_TOOLS = (
    "{%- if tools %}{{ '<|im_start|>system\\n' }}{% if messages[0]['role'] == 'system' %}"
    "{{ messages[0]['content'] + '\\n\\n' }}{% endif %}"
    "{{ '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with "
    "function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{% for tool in tools %}{{ '\\n' + (tool | tojson) }}{% endfor %}"
    "{{ '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\\n<tool_call>\\n{\"name\": <function-name>, \"arguments\": <args-json-object>}"
    "\\n</tool_call><|im_end|>\\n' }}"
    "{%- elif messages[0]['role'] == 'system' %}{{ '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for m in messages %}"
    "{%- if m['role'] == 'user' %}{{ '<|im_start|>user\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{%- elif m['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' + (m['content'] or '') }}"
    "{%- for call in m.get('tool_calls') or [] %}{% if m['content'] or not loop.first %}{{ '\\n' }}{% endif %}"
    "{{ '<tool_call>\\n{\"name\": \"' + call['function']['name'] + '\", \"arguments\": ' "
    "+ (call['function']['arguments'] | tojson) + '}\\n</tool_call>' }}{%- endfor %}{{ '<|im_end|>\\n' }}"
    "{%- elif m['role'] == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}{{ '<|im_start|>user' }}{% endif %}"
    "{{ '\\n<tool_response>\\n' + m['content'] + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}{{ '<|im_end|>\\n' }}{% endif %}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
GEMMA = (  # Gemma 3's: the system turn folded into the first user turn, the assistant called "model"
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set prefix = messages[0]['content'] + '\\n\\n' %}"
    "{% set turns = messages[1:] %}{% else %}{% set prefix = '' %}{% set turns = messages %}{% endif %}"
    "{% for m in turns %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + (prefix if loop.first else '') + m['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
QWEN3 = (  # Qwen3's: the answer after the last user turn carries its (here empty) reasoning in a <think> block
    "{% for m in messages %}{% if m['role'] == 'assistant' and loop.last %}"
    "{{ '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% else %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
MISTRAL_V3 = (  # Mistral v0.3's: the system turn joins the last user turn (v0.1's refuses one: the built-in mistral)
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}{% set turns = messages[1:] %}"
    "{% else %}{% set system = '' %}{% set turns = messages %}{% endif %}"
    "{% set last_user = namespace(i=-1) %}{% for m in turns %}{% if m['role'] == 'user' %}"
    "{% set last_user.i = loop.index0 %}{% endif %}{% endfor %}{{ bos_token }}{% for m in turns %}"
    "{% if m['role'] == 'user' %}{{ '[INST] ' + (system + '\\n\\n' if system and loop.index0 == last_user.i else '')"
    " + m['content'] + '[/INST]' }}{% else %}{{ ' ' + m['content'] + eos_token }}{% endif %}{% endfor %}"
)
PHI3 = (  # Phi-3's turns, closed by <|end|>; Phi-3's own template also ends an unanswered text with the EOS, which
    # would move as turns are added (multi-turn rows refused) and follow <|end|> in every trained answer
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + '<|end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
BUILT_IN = {"chatml": CHATML, "chatml-tools": CHATML_TOOLS, "llama-3": LLAMA_3, "mistral": MISTRAL,
            "mistral-v3": MISTRAL_V3, "alpaca": ALPACA, "gemma": GEMMA, "qwen3": QWEN3, "phi-3": PHI3}
PROBE = [{"role": "user", "content": "Hello?"}, {"role": "assistant", "content": "Hi."}]


class TemplateError(ValueError):
    """The chat template cannot be used with this tokenizer or this dataset."""


def template_source(spec: str) -> str:
    """The Jinja text for `model.chat_template` ("tokenizer" is handled by the caller)."""
    if spec in BUILT_IN:
        return BUILT_IN[spec]
    path = Path(spec).expanduser()
    if not path.is_file():
        raise TemplateError(f"model.chat_template: '{spec}' is neither a built-in template "
                            f"({', '.join(['tokenizer', *BUILT_IN])}) nor an existing Jinja file")
    return path.read_text(encoding="utf-8")


def apply_template(tokenizer, spec: str) -> None:
    """Set the configured template on `tokenizer` and make its end-of-turn token the EOS."""
    if spec != "tokenizer":
        tokenizer.chat_template = template_source(spec)
    if not tokenizer.chat_template:
        raise TemplateError("the tokenizer has no chat template: set model.chat_template "
                            f"(one of {', '.join(BUILT_IN)}, or a Jinja file)")
    end = end_of_turn(tokenizer)
    if tokenizer.eos_token != end:
        tokenizer.eos_token = end
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def end_of_turn(tokenizer) -> str:
    """The single token that closes an assistant turn in the template (what the model must learn to emit)."""
    prompt = render(tokenizer, PROBE[:1], generation_prompt=True)
    full = render(tokenizer, PROBE)
    if not full.startswith(prompt):
        raise TemplateError("the chat template renders a conversation differently once the assistant has answered "
                            "(the generation prompt is not a prefix of the answered conversation)")
    tail = full[len(prompt):]
    answer_at = tail.find(PROBE[1]["content"])
    if answer_at < 0:
        raise TemplateError("the chat template does not render the assistant's content")
    closing = tail[answer_at + len(PROBE[1]["content"]):].strip()
    ids = tokenizer(closing, add_special_tokens=False)["input_ids"] if closing else []
    if len(ids) > 1 and ids[0] in special_ids(tokenizer):  # Phi-3: <|end|>, then the text's EOS after the last turn
        closing, ids = tokenizer.convert_ids_to_tokens(ids[0]), ids[:1]
    if len(ids) != 1:
        found = f"'{closing}' ({len(ids)} tokens)" if closing else "nothing"
        raise TemplateError(
            f"the chat template closes an assistant turn with {found}, not with one token of this tokenizer's "
            "vocabulary, so the model could not learn to stop; use a template whose end-of-turn token the "
            "tokenizer has (e.g. one using eos_token)")
    return closing


def special_ids(tokenizer) -> set[int]:
    return set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}


def render(tokenizer, messages: list[dict], generation_prompt: bool = False, tools=None) -> str:
    return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=generation_prompt)


TOOL_PROBE_TOOLS = [{"type": "function", "function": {"name": "probe_lookup_zq", "description": "d",
                                                      "parameters": {"type": "object", "properties": {}}}}]
TOOL_PROBE = [
    {"role": "user", "content": "u"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "probe_call_zq", "arguments": {"probe_arg_zq": 1}}}]},
    {"role": "tool", "content": "probe_result_zq"},
    {"role": "assistant", "content": "a"},
]


def tool_support(render_fn) -> dict[str, bool]:
    """Which tool parts the template renders: definitions (`tools`), assistant `tool_calls`, `tool` results.
    A template that drops one would train the model on a conversation without it, so such rows are refused."""
    try:
        text = render_fn(TOOL_PROBE, tools=TOOL_PROBE_TOOLS)
    except Exception:  # jinja's raise_exception on an unknown role: it renders none of them
        return {"tools": False, "tool_calls": False, "tool results": False}
    return {"tools": "probe_lookup_zq" in text,
            "tool_calls": "probe_call_zq" in text and "probe_arg_zq" in text,
            "tool results": "probe_result_zq" in text}


def fast_renderer(tokenizer):
    """`render` for many rows: the template compiled once (transformers' own cached compiler and sandbox) and called
    directly with the special tokens, skipping apply_chat_template's per-call conversions (tools, documents, copies)
    that plain text messages do not need. Output is identical (tested); falls back to `render` if that moves."""
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template

        compiled = _compile_jinja_template(tokenizer.chat_template)
    except (ImportError, AttributeError):
        return lambda messages, generation_prompt=False, tools=None: render(tokenizer, messages, generation_prompt,
                                                                            tools)
    specials = dict(tokenizer.special_tokens_map)
    return lambda messages, generation_prompt=False, tools=None: compiled.render(
        messages=messages, add_generation_prompt=generation_prompt, tools=tools, **specials)


def row_text(tokenizer, row: dict) -> str:
    """A normalised row as the model reads it: the rendered conversation, or the plain text."""
    from llm_engineering.data.formats import chat_messages, row_tools

    if not row.get("messages"):
        return row["text"]
    return render(tokenizer, chat_messages(row["messages"]), tools=row_tools(row))
