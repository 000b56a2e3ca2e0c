"""The parts of `transformers` below its public API this project relies on, in one place: each is checked by
tests/test_library_internals.py, so a release that changes one fails there, by name, rather than in a run."""


def attention_in_use(config) -> str:
    return config._attn_implementation


def switch_attention(config, implementation: str) -> None:
    """Switch the attention the decoder layers call, for the next forward. The layers read the config's attribute on
    every call; the public `set_attn_implementation` also checks and re-initialises, too slow for a per-forward
    switch (training/context.py: flex attention for training forwards only)."""
    config._attn_implementation = implementation
