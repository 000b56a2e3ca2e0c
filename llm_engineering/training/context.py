"""What the model runs under while it trains, and the batches it is given: packed rows kept apart, fused LoRA,
compiled layers, flex attention for training forwards only."""

import contextlib

import torch

from llm_engineering.config import ModelConfig, TrainConfig
from llm_engineering.data.collate import PackedCollator, block_diagonal_attention
from llm_engineering.model.transformers_internals import attention_in_use, switch_attention


def varlen_packing(cfg: TrainConfig, model_cfg: ModelConfig) -> bool:
    """Packed rows kept apart by the attention kernel itself (flash attention's variable-length kernels, or flex
    attention's block-sparse document mask, both CUDA), instead of an L x L mask that computes every masked score."""
    return cfg.packing and model_cfg.attn_implementation in ("flash_attention_2", "flex_attention")


def packed_collator(tokenizer, cfg: TrainConfig, model_cfg: ModelConfig) -> PackedCollator:
    """Varlen packing flattens a batch into one sequence. Flex attention's kernel is compiled for one shape, so its
    batches are padded to the longest possible (packed: pads are rows of one token, untrained): a fixed shape compiles
    once instead of recompiling for every new length until torch.compile gives up and runs it unfused."""
    flex = fixed_length_batches(model_cfg)
    fixed = cfg.max_length * (cfg.per_device_batch_size if cfg.packing else 1)
    return PackedCollator(pad_token_id=tokenizer.pad_token_id, padding_free=varlen_packing(cfg, model_cfg),
                          pad_to_multiple_of=fixed if flex else None, positions_only=flex and cfg.packing)


def fixed_length_batches(model_cfg: ModelConfig) -> bool:
    """Flex attention's kernel compiles per shape: its batches all have one length (packed_collator)."""
    return model_cfg.attn_implementation == "flex_attention"


@contextlib.contextmanager
def training_context(model, cfg: TrainConfig, model_cfg: ModelConfig):
    """What the model runs under while it trains: 4-bit weights kept in their trainable layout through mid-training
    evaluations (bnb_cpu.py), the block-diagonal mask for packed rows (unless flash attention keeps them apart), the
    fused LoRA linears (`train.fused_lora`) and the compiled decoder layers (`train.compile`)."""
    from llm_engineering.model.bnb_cpu import trainable_4bit_layout
    from llm_engineering.training.fused_lora import fused_lora
    from llm_engineering.training.regional_compile import compiled_decoder_layers

    with contextlib.ExitStack() as stack:
        stack.enter_context(trainable_4bit_layout(model))
        if cfg.packing and not varlen_packing(cfg, model_cfg):
            stack.enter_context(block_diagonal_attention(model))
        if cfg.fused_lora:
            stack.enter_context(fused_lora(model))
        if model_cfg.attn_implementation == "flex_attention":
            stack.enter_context(flex_attention_while_training(model))
        if cfg.compile:
            stack.enter_context(compiled_decoder_layers(model, fixed_length=fixed_length_batches(model_cfg)))
        yield


@contextlib.contextmanager
def flex_attention_while_training(model):
    """Flex attention for the training forwards only. Its kernel is compiled per shape, which suits training's
    fixed-length batches; every other forward (mid-training evaluations here, and outside: generation, merge checks,
    rows of any length) runs the sdpa the model was loaded with (loading.py), instead of compiling again per shape
    or, where compilation is off for evaluations (regional_compile.py), running flex unfused with full score
    matrices."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    loaded = attention_in_use(base.config)
    base.set_attn_implementation("flex_attention")  # transformers checks that this torch has it

    def pick(module, _args):
        training = module.training and torch.is_grad_enabled()
        switch_attention(base.config, "flex_attention" if training else loaded)

    handle = model.register_forward_pre_hook(pick)
    try:
        yield
    finally:
        handle.remove()
        base.set_attn_implementation(loaded)
