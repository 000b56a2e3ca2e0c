"""The speed levers compute the same thing as the plain path: the loss on trained positions, bf16 preparation,
and the throughput numbers the SFT step reports."""

import math

import pytest
import torch

from llm_engineering.config import AdapterConfig, DataConfig, ModelConfig, QuantizationConfig, TrainConfig
from llm_engineering.model.adapter import inject_adapter
from llm_engineering.model.loading import load_model, load_tokenizer
from llm_engineering.training.sft import build_trainer
from llm_engineering.training.throughput import matmul_peak_gflops, model_tflops, parameter_count
from tests.conftest import prepared

TRAIN = TrainConfig(max_steps=2, per_device_batch_size=4, logging_steps=1, eval_steps=2, max_length=256)


@pytest.mark.parametrize("packing", [False, True])
def test_the_trained_positions_loss_equals_the_full_logits_loss(tiny_model_dir, tmp_path, packing):
    model_cfg = ModelConfig(source="local", name_or_path=str(tiny_model_dir), dtype="float32",
                            quantization=QuantizationConfig(method="none"))
    tokenizer = load_tokenizer(model_cfg)
    data = prepared(DataConfig(num_rows=24, eval_rows=4))
    model, _ = inject_adapter(load_model(model_cfg), AdapterConfig(r=4, alpha=8, target_modules="all-linear"))
    cfg = TRAIN.model_copy(update={"lm_head_loss": "trained_positions", "packing": packing, "mixed_precision": "no"})
    trainer = build_trainer(model, tokenizer, model_cfg, AdapterConfig(), cfg, data.train, data.eval, tmp_path)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    from llm_engineering.data.collate import block_diagonal_attention

    with torch.no_grad(), block_diagonal_attention(model):
        ours = trainer.compute_loss(model, dict(batch))
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=batch["position_ids"]).logits[:, :-1]
    plain = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch["labels"][:, 1:], ignore_index=-100)
    assert math.isclose(ours.item(), plain.item(), rel_tol=1e-5)


def test_a_bf16_quantized_base_stays_bf16_and_frozen(tiny_model_dir):
    cfg = ModelConfig(source="local", name_or_path=str(tiny_model_dir), dtype="bfloat16",
                      quantization=QuantizationConfig(method="4bit", compute_dtype="bfloat16"))
    model, _ = inject_adapter(load_model(cfg), AdapterConfig(r=4, alpha=8, target_modules="all-linear"))
    base_float = {p.dtype for n, p in model.named_parameters() if "lora_" not in n and p.is_floating_point()}
    assert base_float == {torch.bfloat16}  # no fp32 copies of embeddings and norms
    assert all(("lora_" in n) == p.requires_grad for n, p in model.named_parameters())


def test_throughput_counts_every_parameter_of_the_unquantized_model(tiny_model_dir):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny_model_dir)
    n = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    assert parameter_count(config) == n
    assert model_tflops(1000.0, n) == pytest.approx(4 * n * 1000 / 1e12)
    peak = matmul_peak_gflops(torch.float32, sizes=(256,), trials=1)
    assert 0.1 < peak < 1e6  # GFLOP/s of a real matmul on this machine
