"""bitsandbytes repacks 4-bit weights for CPU inference after an eval pass, and its inference kernel passes no
gradient to the layer input. Training must not lose the lower layers' gradients to a mid-training evaluation."""

import pytest
import torch

from llm_engineering.config import AdapterConfig, ModelConfig, QuantizationConfig
from llm_engineering.model.adapter import inject_adapter, prepare_for_training
from llm_engineering.model.bnb_cpu import trainable_4bit_layout
from llm_engineering.model.loading import load_model

FIRST_LAYER_A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"


def qlora(tiny_model_dir):
    cfg = ModelConfig(source="local", name_or_path=str(tiny_model_dir), dtype="bfloat16",
                      quantization=QuantizationConfig(method="4bit", compute_dtype="bfloat16"))
    adapter = AdapterConfig(r=4, alpha=8, dropout=0.0, target_modules="all-linear", init_lora_weights="gaussian")
    model, _ = inject_adapter(prepare_for_training(load_model(cfg), adapter), adapter)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05, generator=torch.Generator().manual_seed(len(name)))
    return model


def grads_before_and_after_an_eval_pass(model):
    ids = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(0))

    def first_layer_grad():
        model.train()
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        return model.get_parameter(FIRST_LAYER_A).grad.clone()

    before = first_layer_grad()
    model.eval()
    with torch.no_grad():  # what Trainer.evaluate does between training steps
        model(input_ids=ids)
    return before, first_layer_grad()


def test_a_mid_training_eval_pass_does_not_change_the_gradients(tiny_model_dir):
    model = qlora(tiny_model_dir)
    with trainable_4bit_layout(model) as layers:
        assert layers == 2 * 7
        before, after = grads_before_and_after_an_eval_pass(model)
    torch.testing.assert_close(after, before)


def test_without_it_bitsandbytes_drops_them_on_this_cpu(tiny_model_dir):
    """The hazard the other test guards against, reproduced (on CPUs with AVX512-BF16, where bitsandbytes repacks)."""
    from bitsandbytes.functional import has_avx512bf16

    if not has_avx512bf16():
        pytest.skip("bitsandbytes repacks only on CPUs with AVX512-BF16")
    before, after = grads_before_and_after_an_eval_pass(qlora(tiny_model_dir))
    # the base weights' share of the input gradient is gone; the residual stream's is left
    assert (after - before).norm() > 0.1 * before.norm()


@pytest.mark.parametrize("fused_lora", [False, True])
def test_training_with_an_eval_every_step_trains_the_same_adapter(tiny_model_dir, tmp_path, fused_lora):
    """End to end through train_adapter, with PEFT's LoRA layers (which call bitsandbytes' forward) and with the fused
    ones (which dequantize themselves): evaluating after every step changes nothing in what is trained."""
    from safetensors.torch import load_file

    from llm_engineering.config import DataConfig, TrainConfig
    from llm_engineering.model.adapter import save_adapter
    from llm_engineering.training.sft import train_adapter
    from tests.conftest import prepared

    model = qlora(tiny_model_dir)
    save_adapter(model, tmp_path / "initial")
    model_cfg = ModelConfig(source="local", name_or_path=str(tiny_model_dir), dtype="bfloat16",
                            quantization=QuantizationConfig(method="4bit", compute_dtype="bfloat16"))
    adapter = AdapterConfig(r=4, alpha=8, dropout=0.0, target_modules="all-linear")
    split = prepared(DataConfig(num_rows=20, eval_rows=4), 160)
    trained = {}
    for eval_steps in (1, 1000):
        train = TrainConfig(learning_rate=5e-3, max_steps=3, per_device_batch_size=4, logging_steps=1,
                            eval_steps=eval_steps, max_length=160, mixed_precision="bf16", fused_lora=fused_lora)
        out = tmp_path / f"eval-every-{eval_steps}"
        train_adapter(model_cfg, adapter, train, tmp_path / "initial", split.train, split.eval, out)
        trained[eval_steps] = load_file(out / "adapter_model.safetensors")
    for name, tensor in trained[1000].items():
        torch.testing.assert_close(trained[1][name], tensor, msg=name)
