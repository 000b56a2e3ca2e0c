"""An Ollama `Modelfile` beside the GGUF files: `ollama create <name> -f Modelfile` in the export directory.

The chat template is translated to Ollama's Go template for the template families this project ships (ChatML,
with the default system prompt a template like SmolLM2's adds; Llama 3). For any other template no TEMPLATE is
written, and Ollama falls back to the `tokenizer.chat_template` inside the GGUF file.
"""

from __future__ import annotations

_CHATML = (
    '{{- if not (and .Messages (eq (index .Messages 0).Role "system")) }}<|im_start|>system\n'
    "%s<|im_end|>\n{{ end }}\n"
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
)
_CHATML_NO_SYSTEM = "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
_LLAMA_3 = (
    "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{ end }}"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)


def default_system_prompt(tokenizer) -> str | None:
    """The system prompt a ChatML template adds when the conversation has none (SmolLM2's does)."""
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    prefix = "<|im_start|>system\n"
    if rendered.startswith(prefix) and "<|im_end|>" in rendered:
        return rendered[len(prefix):rendered.index("<|im_end|>")]
    return None


def ollama_template(tokenizer) -> str | None:
    template = tokenizer.chat_template or ""
    if "<|im_start|>" in template:
        system = default_system_prompt(tokenizer)
        return _CHATML % system.replace("{{", "{{ `{{` }}") if system else _CHATML_NO_SYSTEM
    if "<|start_header_id|>" in template:
        return _LLAMA_3
    return None


def modelfile(tokenizer, gguf_file: str, end_tokens: list[str]) -> str:
    lines = ["# ollama create <name> -f Modelfile   (in this directory)", f"FROM ./{gguf_file}"]
    template = ollama_template(tokenizer)
    if template is None:
        lines.append("# no TEMPLATE: this chat template has no translation here; Ollama uses the GGUF's own")
    else:
        lines.append(f'TEMPLATE """{template}"""')
    lines += [f'PARAMETER stop "{token}"' for token in dict.fromkeys(end_tokens)]
    lines += ["# greedy, as the export was evaluated", "PARAMETER temperature 0"]
    return "\n".join(lines) + "\n"
