"""GGUF files of the merged model, for llama.cpp, Ollama and LM Studio, written with the `gguf` package.

`export.gguf: [f16, q8_0]` writes `model-<type>.gguf` into the export for Llama-architecture models: the weights in
the layout llama.cpp expects (its tensor names; q/k rows permuted as its converter does), the hyperparameters, the
BPE tokenizer (tokens, token types, merges, pre-tokenizer type, special tokens), the chat template and the
end-of-turn token; and an Ollama `Modelfile` beside them.

Each file is checked before anything is registered: transformers' own GGUF loader reloads it (undoing the
permutation and the quantization), its logits on the eval prompts are compared with the merged model's (f16: with
the merged weights rounded to f16, see CHECKS), and its tokenizer must encode the prompts to the same ids. Over a
threshold the export fails, with nothing exported.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from llm_engineering.config import ModelConfig, unwritable_gguf_types

logger = logging.getLogger(__name__)

ARCHITECTURES = {"LlamaForCausalLM": "llama"}
# type: (max |Δlogit| allowed, min top-1 agreement) on the eval prompts. f16 is compared with the merged model's
# matrices rounded to f16 (norms fp32), which is exactly what the file holds: measured 0.0 there, so any layout or
# tokenizer error shows. Against full precision that rounding alone moves the default export's logits by 0.063 over
# ~1,000 tokens (one near-tie flips), and a bar there would fail correct files. q8_0 is compared with the merged
# model. Both comparisons with the merged model are reported (merged_*).
CHECKS = {"f16": (1e-3, 1.0), "q8_0": (None, 0.95)}

# llama.cpp recognises a BPE pre-tokenizer by the hash of the ids it gives this text (convert_hf_to_gguf.py,
# get_vocab_base_pre); the ones of the models this project is used with.
_PRE_TOKENIZER_PROBE = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 3 33 "
    "333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= "
    "нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure "
    "I'll make it, 'D you like some tea? We'Ve a'lL"
)
PRE_TOKENIZERS = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
}


class GGUFError(RuntimeError):
    """The model cannot be written as GGUF, or a written file does not reproduce the merged model."""


@dataclass(frozen=True)
class GGUFReport:
    gguf_type: str
    file: str
    bytes: int
    max_abs_logit_diff: float
    top1_agreement: float
    tokenizer_ids_equal: bool
    merged_max_abs_logit_diff: float
    merged_top1_agreement: float


def gguf_problems(config, tokenizer, gguf_types) -> list[str]:
    """Why these GGUF types of this model cannot be written (empty: they can)."""
    problems = [p for p in [unwritable_gguf_types(gguf_types)] if p]
    architectures = getattr(config, "architectures", None) or [type(config).__name__]
    if not any(a in ARCHITECTURES for a in architectures):
        problems.append(f"export.gguf: architecture {architectures[0]} is not supported; GGUF export writes "
                        f"{', '.join(ARCHITECTURES)} models")
    rope = _rope(config)
    if rope.get("rope_type", "default") != "default":
        problems.append(f"export.gguf: rope type {rope['rope_type']!r} is not supported (only the default rope)")
    if pre_tokenizer(tokenizer) is None:
        problems.append("export.gguf: the tokenizer's BPE pre-tokenizer is not one llama.cpp knows by hash here "
                        f"(known: {', '.join(sorted(set(PRE_TOKENIZERS.values())))})")
    return problems


def check_gguf_support(config, tokenizer, gguf_types) -> None:
    problems = gguf_problems(config, tokenizer, gguf_types) if gguf_types else []
    if problems:
        raise GGUFError("; ".join(problems))


def check_model_supports_gguf(model_cfg: ModelConfig, gguf_types) -> None:
    """When the pipeline compiles: refuse a model these GGUF files cannot be written for, before any step runs.
    A hub model not in the local cache is checked in the export step instead (no network at compile time)."""
    if not gguf_types:
        return
    from transformers import AutoConfig

    from llm_engineering.model.loading import checkpoint_location, load_tokenizer

    try:
        config = AutoConfig.from_pretrained(checkpoint_location(model_cfg), revision=model_cfg.revision,
                                            trust_remote_code=model_cfg.trust_remote_code)
        tokenizer = load_tokenizer(model_cfg)
    except OSError as exc:
        logger.warning("export.gguf is checked in the export step: the model is not readable yet (%s)", exc)
        return
    check_gguf_support(config, tokenizer, gguf_types)


def pre_tokenizer(tokenizer) -> str | None:
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        return None
    ids = tokenizer.encode(_PRE_TOKENIZER_PROBE)
    return PRE_TOKENIZERS.get(hashlib.sha256(str(ids).encode()).hexdigest())


def _rope(config) -> dict:
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    return dict(rope)


def _permute(weights: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's rotary layout for q/k rows (its converter's `permute`)."""
    return weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(
        weights.shape)


def _token_list(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    import gguf

    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(by_id[i])
        if i in added:
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _adds_bos(tokenizer) -> bool:
    ids = tokenizer("a")["input_ids"]
    return tokenizer.bos_token_id is not None and bool(ids) and ids[0] == tokenizer.bos_token_id


def _adds_space_prefix(tokenizer) -> bool:
    pre = json.loads(tokenizer.backend_tokenizer.to_str()).get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre])
    return any(p.get("add_prefix_space") for p in parts if isinstance(p, dict))


def write_gguf(model, tokenizer, tokenizer_dir: Path, path: Path, gguf_type: str, name: str) -> Path:
    """One GGUF file of `model` (a Llama) with its tokenizer (saved in `tokenizer_dir`) and chat template."""
    import gguf

    config = model.config
    check_gguf_support(config, tokenizer, [gguf_type])
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(_rope(config).get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if gguf_type == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    tokens, types = _token_list(tokenizer, config.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer(tokenizer))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(tokenizer_dir, load_merges=True, n_vocab=config.vocab_size)
    # What the tokenizer does on its own, where its files do not say (transformers 5 no longer writes add_bos_token)
    special.add_special_token.setdefault("bos", _adds_bos(tokenizer))
    special.add_to_gguf(writer)  # merges, bos/eos/unk/pad ids, add_bos_token, the chat template
    writer.add_add_space_prefix(_adds_space_prefix(tokenizer))
    writer.add_eot_token_id(tokenizer.eos_token_id)  # the template's end-of-turn token
    if tokenizer.chat_template and not special.chat_template:
        writer.add_chat_template(tokenizer.chat_template)

    names = gguf.TensorNameMap(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight",))
        if gguf_name is None:
            raise GGUFError(f"export.gguf: no GGUF name for tensor {hf_name}")
        data = tensor.detach().float()
        if hf_name.endswith("q_proj.weight"):
            data = _permute(data, heads)
        elif hf_name.endswith("k_proj.weight"):
            data = _permute(data, kv_heads)
        array = data.numpy()
        if array.ndim == 1:  # norms stay fp32, as llama.cpp writes them
            writer.add_tensor(gguf_name, array.astype(np.float32))
        elif gguf_type == "f16":
            writer.add_tensor(gguf_name, array.astype(np.float16))
        else:
            qtype = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(gguf_name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@torch.no_grad()
def verify_gguf(path: Path, reference_model, tokenizer, texts: list[str], gguf_type: str) -> GGUFReport:
    """Reload `path` with transformers' GGUF loader and compare it with `reference_model` on `texts`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm_engineering.merge.fidelity import logit_agreement
    from llm_engineering.model.loading import padding_side

    reloaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    reloaded.eval()
    gguf_tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    ids_equal = all(gguf_tokenizer(t, add_special_tokens=False)["input_ids"] ==
                    tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts)
    with padding_side(tokenizer, "right"):
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    mask = batch["attention_mask"].bool()
    # An fp32 copy where anything would change, never the model itself: a bf16 model cast up and back would keep its
    # rotary inv_freq buffer in bf16 (it loads in fp32), and the export written from it afterwards would not match
    # its own reload; f16 rounds the copy's matrices. An fp32 model checked against q8_0 is used as it is.
    changes = reference_model.dtype != torch.float32 or gguf_type == "f16"
    upcast = copy.deepcopy(reference_model).float() if changes else reference_model
    merged = upcast(**batch).logits
    reference = merged
    if gguf_type == "f16":  # the file's weights: matrices in f16, norms in fp32
        for param in upcast.parameters():
            if param.ndim >= 2:
                param.copy_(param.half().float())
        reference = upcast(**batch).logits
    del upcast
    logits = reloaded(**batch).logits

    (max_diff_seen, _, top1), (merged_diff, _, merged_top1) = (logit_agreement(expected, logits, mask)
                                                                for expected in (reference, merged))
    report = GGUFReport(
        gguf_type=gguf_type, file=path.name, bytes=path.stat().st_size, max_abs_logit_diff=max_diff_seen,
        top1_agreement=top1, tokenizer_ids_equal=ids_equal, merged_max_abs_logit_diff=merged_diff,
        merged_top1_agreement=merged_top1,
    )
    max_diff, min_top1 = CHECKS[gguf_type]
    problems = []
    if max_diff is not None and report.max_abs_logit_diff > max_diff:
        problems.append(f"max |Δlogit| {report.max_abs_logit_diff:.3g} > {max_diff:g}")
    if report.top1_agreement < min_top1:
        problems.append(f"top-1 agreement {report.top1_agreement:.3f} < {min_top1:g}")
    if not ids_equal:
        problems.append("its tokenizer encodes the eval prompts to other ids")
    if problems:
        raise GGUFError(f"{path.name} does not reproduce the merged model on {len(texts)} eval prompts: "
                        f"{'; '.join(problems)}; nothing was exported")
    return report
