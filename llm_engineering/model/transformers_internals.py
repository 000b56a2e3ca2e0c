"""The parts of `transformers` below its public API this project relies on, in one place: each is checked by
tests/test_library_internals.py, so a release that changes one fails there, by name, rather than in a run."""


def attention_in_use(config) -> str:
    return config._attn_implementation


def switch_attention(config, implementation: str) -> None:
    """Switch the attention the decoder layers call, for the next forward. The layers read the config's attribute on
    every call; the public `set_attn_implementation` also checks and re-initialises, too slow for a per-forward
    switch (training/context.py: flex attention for training forwards only)."""
    config._attn_implementation = implementation


def gguf_causal_architectures() -> list[str]:
    """The GGUF `general.architecture` values transformers' GGUF reader turns into a causal LM (its list, less the
    entries that are not an architecture and the encoder-decoder ones, which this project does not train)."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer", "t5", "umt5"})


def gguf_reader_architecture(architecture: str) -> str:
    """A GGUF file's `general.architecture` as transformers' reader names it (it renames a few: qwen2moe ->
    qwen2_moe, ...; `load_gguf_checkpoint` does this inline)."""
    for written, named in (("qwen2moe", "qwen2_moe"), ("gpt-oss", "gpt_oss"), ("gpt_oss", "gpt_oss"),
                           ("qwen3moe", "qwen3_moe"), ("minimax-m2", "minimax_m2")):
        if written in architecture:
            return named
    return architecture
