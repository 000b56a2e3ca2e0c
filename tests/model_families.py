"""Tiny random checkpoints of the model families users fine-tune, each with its family's traits switched on and its
family's chat format, saved as a local checkpoint beside a real tokenizer of the family's kind, so a test can take each
one through every stage in seconds: for the BPE families (Llama 3, Qwen) the embedded model's BPE tokenizer with the
family's turn markers added as special tokens; for the SentencePiece families (Gemma, Mistral, Phi-3) a 2,000-piece
SentencePiece BPE model (byte fallback) trained here on the booking task's and the replay rows' text, in the family's own tokenizer class,
with its `tokenizer.model` beside it as the real checkpoints have.

What each family brings that breaks fine-tuning tools (the traits below switch them on):
- llama3: llama3 rope scaling, untied embeddings, three end tokens (<|eot_id|>, <|eom_id|>, <|end_of_text|>)
- qwen2: q/k/v biases, tied embeddings, ChatML
- qwen3: q/k norms, tied embeddings, ChatML whose answers open with a <think> block
- gemma2: logit soft-capping, alternating sliding windows, scaled embeddings, tied, eager attention only, no system role
- gemma3: q/k norms, sliding windows (the first layers of its five-local-to-one-global pattern), scaled embeddings, tied,
  no system role
- mistral: as Mistral-7B-Instruct v0.1/v0.2: a 4,096-token sliding window (wider than these rows, as than most
  prompts: llama.cpp runs Mistral without it), [INST] turns as plain text closed by </s>, the system prompt inside
  the last user turn, a "legacy" SentencePiece tokenizer (a space before the text after each special token)
- phi3: fused qkv_proj and gate_up_proj, <|user|> / <|end|> turns that swallow the newline after them (rstrip, as
  Phi-3's own tokenizer), a "legacy" SentencePiece tokenizer, the end of the text after the last turn
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, INTER, LAYERS = 64, 4, 2, 16, 128, 2
SIZE = dict(hidden_size=HIDDEN, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, intermediate_size=INTER,
            num_hidden_layers=LAYERS, max_position_embeddings=512)



@dataclass(frozen=True)
class Family:
    name: str
    model_class: str  # in transformers
    config_class: str
    traits: dict
    chat_template: str  # the built-in template (llm_engineering.data.templates) in the family's format
    end_of_turn: str  # the token that closes an answer
    special_tokens: tuple = ()  # turn markers the family's tokenizer has as single tokens
    bos: str = "<|im_start|>"
    eos: str = "<|im_end|>"
    end_tokens: tuple = ()  # the generation config's EOS ids beyond end_of_turn (by token)
    tied: bool = False
    attention: dict = field(default_factory=dict)  # preset -> the family's module names
    mlp: tuple = ("down_proj", "gate_proj", "up_proj")
    sentencepiece: tuple = ()  # (tokenizer class, the trainer's special pieces) for a SentencePiece family
    legacy: bool = False  # a Llama-class tokenizer's legacy mode: the real Mistral v0.1/v0.2's and Phi-3's
    rstrip_markers: bool = False  # its turn markers take the whitespace after them (Phi-3's do)


ATTENTION = ("k_proj", "o_proj", "q_proj", "v_proj")
PROJECT = Path(__file__).resolve().parents[1]
VOCAB = 2000  # pieces: enough that the replay rows fit the shipped configs' max_length as with a real vocabulary
GEMMA_PIECES = ("GemmaTokenizer", dict(pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>",
                                      bos_piece="<bos>", unk_piece="<unk>"))
LLAMA_PIECES = ("LlamaTokenizer", dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1, unk_piece="<unk>", bos_piece="<s>",
                                      eos_piece="</s>"))
SLIDING = ["sliding_attention", "full_attention"]
FAMILIES = {f.name: f for f in [
    Family("llama3", "LlamaForCausalLM", "LlamaConfig",
           dict(rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
           "llama-3", "<|eot_id|>",
           special_tokens=("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                           "<|eot_id|>", "<|eom_id|>"),
           bos="<|begin_of_text|>", eos="<|end_of_text|>", end_tokens=("<|eom_id|>", "<|end_of_text|>")),
    Family("qwen2", "Qwen2ForCausalLM", "Qwen2Config", dict(tie_word_embeddings=True), "chatml", "<|im_end|>",
           tied=True),
    Family("qwen3", "Qwen3ForCausalLM", "Qwen3Config", dict(tie_word_embeddings=True, head_dim=HEAD_DIM), "qwen3",
           "<|im_end|>", tied=True),
    Family("gemma2", "Gemma2ForCausalLM", "Gemma2Config",
           dict(head_dim=HEAD_DIM, query_pre_attn_scalar=HEAD_DIM, sliding_window=8, layer_types=SLIDING,
                final_logit_softcapping=30.0, attn_logit_softcapping=50.0, tie_word_embeddings=True),
           "gemma", "<end_of_turn>", special_tokens=("<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"),
           bos="<bos>", eos="<eos>", end_tokens=("<eos>",), tied=True, sentencepiece=GEMMA_PIECES),
    # both layers local, as the first five of every Gemma 3 are (five sliding to one global: llama.cpp assumes it)
    Family("gemma3", "Gemma3ForCausalLM", "Gemma3TextConfig",
           dict(head_dim=HEAD_DIM, query_pre_attn_scalar=HEAD_DIM, sliding_window=8,
                layer_types=["sliding_attention"] * LAYERS,
                tie_word_embeddings=True),
           "gemma", "<end_of_turn>", special_tokens=("<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"),
           bos="<bos>", eos="<eos>", end_tokens=("<eos>",), tied=True, sentencepiece=GEMMA_PIECES),
    Family("mistral", "MistralForCausalLM", "MistralConfig", dict(sliding_window=4096, head_dim=HEAD_DIM),
           "mistral-v3", "</s>", special_tokens=("<s>", "</s>"), bos="<s>", eos="</s>", sentencepiece=LLAMA_PIECES,
           legacy=True),
    Family("phi3", "Phi3ForCausalLM", "Phi3Config", dict(original_max_position_embeddings=512), "phi-3", "<|end|>",
           special_tokens=("<|user|>", "<|assistant|>", "<|system|>", "<|end|>", "<|endoftext|>"),
           bos="<s>", eos="<|endoftext|>", end_tokens=("<|endoftext|>",), sentencepiece=LLAMA_PIECES, legacy=True,
           rstrip_markers=True, attention=("o_proj", "qkv_proj"), mlp=("down_proj", "gate_up_proj")),
]}


def family_attention(family: Family) -> tuple:
    return family.attention or ATTENTION


def build_family_checkpoint(family: Family, directory: Path, seed: int = 0) -> Path:
    """Save `family`'s tiny random model and its tokenizer (chat template set) to `directory`."""
    import torch
    import transformers
    from transformers import AutoTokenizer, GenerationConfig

    from llm_engineering.data.templates import BUILT_IN
    from llm_engineering.model.embedded import embedded_model_dir

    if family.sentencepiece:
        tokenizer = sentencepiece_tokenizer(family, directory)
    else:
        tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
        tokenizer.add_special_tokens({"additional_special_tokens": list(family.special_tokens)})
    tokenizer.bos_token, tokenizer.eos_token = family.bos, family.eos
    tokenizer.chat_template = BUILT_IN[family.chat_template]
    ids = tokenizer.convert_tokens_to_ids
    config = getattr(transformers, family.config_class)(
        vocab_size=len(tokenizer), bos_token_id=ids(family.bos), eos_token_id=ids(family.eos),
        pad_token_id=ids(family.eos), **{**SIZE, **family.traits})
    torch.manual_seed(seed)
    model = getattr(transformers, family.model_class)(config)
    end_ids = [ids(family.end_of_turn)] + [ids(t) for t in family.end_tokens if t != family.end_of_turn]
    model.generation_config = GenerationConfig(bos_token_id=ids(family.bos), eos_token_id=end_ids,
                                               pad_token_id=ids(family.eos))
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def sentencepiece_tokenizer(family: Family, directory: Path):
    """A tiny SentencePiece BPE model trained on the booking task's text (byte fallback: any text encodes), saved as
    `directory/tokenizer.model`, in the family's tokenizer class; its turn markers are special tokens."""
    import io

    import sentencepiece
    import transformers
    from tokenizers import AddedToken
    from tokenizers.models import BPE
    from transformers.convert_slow_tokenizer import SentencePieceExtractor

    from llm_engineering.data.synthetic import booking_rows

    class_name, pieces = family.sentencepiece
    reserved = {v for k, v in pieces.items() if k.endswith("_piece")}
    markers = [t for t in family.special_tokens if t not in reserved]
    texts = [m["content"] for row in booking_rows(300, seed=0) for m in row["messages"]]
    for file in sorted((PROJECT / "data" / "replay").glob("*.jsonl")):  # general text too: the replay rows, pairs
        texts += [line for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=VOCAB, model_type="bpe", byte_fallback=True,
        user_defined_symbols=markers, character_coverage=1.0, normalization_rule_name="identity",
        add_dummy_prefix=class_name == "LlamaTokenizer", remove_extra_whitespaces=False, split_digits=True,
        allow_whitespace_only_pieces=True, minloglevel=2, **pieces)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.model").write_bytes(model.getvalue())
    extracted = SentencePieceExtractor(str(directory / "tokenizer.model")).extract(BPE)
    options = {"legacy": True} if family.legacy else {}
    tokenizer = getattr(transformers, class_name)(vocab=extracted["vocab"], merges=extracted["merges"], **options)
    tokenizer.add_special_tokens({"additional_special_tokens": [
        AddedToken(m, rstrip=family.rstrip_markers, lstrip=False, normalized=False, special=True) for m in markers]})
    return tokenizer
