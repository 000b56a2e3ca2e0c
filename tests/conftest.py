"""Shared fixtures: offline mode, and a tiny random-init Llama with the real SmolLM2 tokenizer (seconds to train)."""

import atexit
import os
import shutil
import tempfile

# One throw-away ZenML store for the whole session, set before anything imports zenml (its config is a singleton).
os.environ["ZENML_CONFIG_PATH"] = tempfile.mkdtemp(prefix="zenml-config-")
# And one datasets cache: a warm cache from an earlier run must not decide whether a test passes.
os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="hf-datasets-")
atexit.register(shutil.rmtree, os.environ["HF_DATASETS_CACHE"], ignore_errors=True)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from llm_engineering.config import AdapterConfig, DataConfig, ModelConfig, QuantizationConfig  # noqa: E402

TINY_LLAMA = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    max_position_embeddings=512, tie_word_embeddings=True,
)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama (hidden 64) saved as safetensors next to the embedded model's real tokenizer."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    from llm_engineering.model.embedded import embedded_model_dir

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    config = LlamaConfig(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **TINY_LLAMA,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def tiny_model_cfg(tiny_model_dir) -> ModelConfig:
    return ModelConfig(source="local", name_or_path=str(tiny_model_dir), dtype="float32",
                       quantization=QuantizationConfig(method="none"))


@pytest.fixture
def tiny_qlora_cfg(tiny_model_dir) -> ModelConfig:
    return ModelConfig(source="local", name_or_path=str(tiny_model_dir), dtype="float32",
                       quantization=QuantizationConfig(method="4bit", compute_dtype="float32"))


@pytest.fixture
def small_data_cfg() -> DataConfig:
    return DataConfig(num_rows=48, eval_rows=8)


@pytest.fixture
def lora_cfg() -> AdapterConfig:
    return AdapterConfig(r=4, alpha=8, dropout=0.0, target_modules="all-linear")


@pytest.fixture(scope="session")
def tokenizer():
    """The embedded SmolLM2 tokenizer with its own (ChatML) template, as the default run uses it."""
    from llm_engineering.model.loading import load_tokenizer

    return load_tokenizer(ModelConfig())


def prepared(data_cfg: DataConfig, max_length: int = 256, kind=None):
    """Rows as the dataset step hands them on (normalised, tokenized, masked, split; SFT rows, or `kind`'s)."""
    from llm_engineering.data.prepare import prepare
    from llm_engineering.model.loading import load_tokenizer

    return prepare(data_cfg, load_tokenizer(ModelConfig()), max_length, kind)
