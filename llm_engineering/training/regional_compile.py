"""Regional compilation: torch.compile of the decoder layers while training, one graph shared by all of them.

Compiling the whole model traces every layer separately (265 s of compilation on this project's 2-core CPU, more
than a default run trains); compiling one layer's forward and reusing it for the identical layers that follow costs
one trace (the recipe PyTorch documents as regional compilation, and what torchtune's `compile` does). What it
fuses: the norms, rotary embeddings, activation, residual adds, dtype casts and LoRA arithmetic between the matmuls,
in the forward and the backward.

Two things would each cost a second graph, so they stay eager:
- the first layer: its input, the frozen embeddings, needs no gradient, and the others' inputs do;
- evaluation and generation (no autograd): the model's own forward switches the compiled layers to eager then.

Where torch.compile has no code generator (no C++ compiler for CPU, no Triton for CUDA), training runs eagerly
with a warning that says what to install, rather than failing a run that would otherwise have trained.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import types
from typing import Iterator, Optional

import torch

logger = logging.getLogger(__name__)


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The repeated blocks of a transformers decoder (wrapped by PEFT or not)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
    count = getattr(config, "num_hidden_layers", None)  # a multimodal model's decoder: its text config's
    for module in base.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise ValueError(f"{type(base).__name__}: no list of {count} decoder layers to compile (train.compile)")


def missing_code_generator(device: torch.device) -> Optional[str]:
    """None if torch.compile can generate kernels for `device`, else what is missing."""
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "Triton (pip install triton)"
    if device.type != "cpu":
        return f"a code generator for {device.type}"
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        get_cpp_compiler()
    except (RuntimeError, OSError):  # inductor's InvalidCxxCompiler (a RuntimeError), or a broken toolchain
        return "a C++ compiler (g++ or clang; CXX names another)"
    return None


def _eager_unless_training(module: torch.nn.Module, _args) -> None:
    torch.compiler.set_stance("default" if module.training and torch.is_grad_enabled() else "force_eager")


@contextlib.contextmanager
def compiled_decoder_layers(model: torch.nn.Module, fixed_length: bool = False) -> Iterator[int]:
    """Compile every decoder layer but the first for the duration; yields how many were compiled. `fixed_length`:
    every batch has one shape (flex attention's packing), so the graph is specialised to it instead of dynamic."""
    layers = list(decoder_layers(model))[1:]
    missing = missing_code_generator(next(model.parameters()).device)
    if missing:
        logger.warning("train.compile: torch.compile needs %s on this machine; training without compilation", missing)
        yield 0
        return
    # batches pad to their longest row: one dynamic graph for every length (flex attention's templates need static
    # shapes, and its batches have one). One compiled function, the layer an argument: one graph for all layers.
    compiled = torch.compile(layer_forward(layers[0]), dynamic=not fixed_length)

    def forward(self, *args, **kwargs):
        # gradient checkpointing stays outside the compiled region: traced inside it, the compiled graph saved
        # the layer's activations anyway (40 GiB instead of 10 on the 8B GPU profile)
        if getattr(self, "gradient_checkpointing", False) and self.training:
            return self._gradient_checkpointing_func(functools.partial(compiled, self, **kwargs), *args)
        return compiled(self, *args, **kwargs)

    for layer in layers:
        layer.forward = types.MethodType(forward, layer)
    handle = model.register_forward_pre_hook(_eager_unless_training)
    try:
        yield len(layers)
    finally:
        handle.remove()
        torch.compiler.set_stance("default")
        for layer in layers:
            del layer.forward  # back to the class's eager forward


def layer_forward(layer: torch.nn.Module):
    """The layer class's own forward, without transformers' gradient-checkpointing wrapper around it."""
    forward = type(layer).forward
    if forward.__name__ == "forward_with_checkpointing":  # transformers.modeling_layers.GradientCheckpointingLayer
        return forward.__wrapped__
    return forward
