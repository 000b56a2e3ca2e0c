"""The fused LoRA linear computes what PEFT's LoRA layers compute: same loss and same gradients, on a dense and on a
bitsandbytes 4-bit base, under bf16 autocast too; layers it does not cover keep PEFT's forward."""

import pytest
import torch

from llm_engineering.config import AdapterConfig, ModelConfig, QuantizationConfig
from llm_engineering.model.adapter import inject_adapter, prepare_for_training
from llm_engineering.model.fused_lora import fused_lora
from llm_engineering.model.loading import load_model


def lora_model(tiny_model_dir, quantization: str, **adapter):
    quant = QuantizationConfig(method=quantization, compute_dtype="float32") if quantization != "none" \
        else QuantizationConfig(method="none")
    cfg = ModelConfig(source="local", name_or_path=str(tiny_model_dir), dtype="float32", quantization=quant)
    settings = dict(r=4, alpha=8, dropout=0.0, target_modules="all-linear", init_lora_weights="gaussian") | adapter
    adapter_cfg = AdapterConfig(**settings)
    model, _ = inject_adapter(prepare_for_training(load_model(cfg), adapter_cfg), adapter_cfg)
    with torch.no_grad():  # B starts at zero: make the update non-zero so its gradients are tested too
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05, generator=torch.Generator().manual_seed(len(name)))
    return model


def loss_and_grads(model, fused: bool, autocast: bool = False):
    torch.manual_seed(0)
    ids = torch.randint(0, 1000, (3, 24))
    model.train()  # as in training (in eval mode bitsandbytes would switch to its CPU inference kernel)
    model.zero_grad()
    with (fused_lora(model) if fused else torch.enable_grad()), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    assert grads and all(g is not None for g in grads.values())
    return loss.item(), grads


@pytest.mark.parametrize("quantization,dropout", [("none", 0.0), ("4bit", 0.0), ("4bit", 0.1)])
def test_fused_layers_give_peft_s_loss_and_gradients(tiny_model_dir, quantization, dropout):
    """With dropout, both draw the same masks: the same seed, one dropout call per layer in the same order."""
    model = lora_model(tiny_model_dir, quantization, dropout=dropout)
    reference_loss, reference = loss_and_grads(model, fused=False)
    with fused_lora(model) as fused:
        assert fused == 2 * 7  # every linear of both layers
    loss, grads = loss_and_grads(model, fused=True)
    assert loss == pytest.approx(reference_loss, rel=1e-6)
    for name, grad in reference.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_under_bf16_autocast_the_gradients_agree_to_bf16_precision(tiny_model_dir):
    model = lora_model(tiny_model_dir, "4bit")
    reference_loss, reference = loss_and_grads(model, fused=False, autocast=True)
    loss, grads = loss_and_grads(model, fused=True, autocast=True)
    assert loss == pytest.approx(reference_loss, rel=1e-2)
    for name, grad in reference.items():
        assert grads[name].dtype == torch.float32  # the adapter's own dtype, for the optimizer
        cosine = torch.nn.functional.cosine_similarity(grads[name].flatten(), grad.flatten(), dim=0)
        assert cosine > 0.99, name


def test_dora_keeps_peft_s_forward_and_the_forward_is_restored(tiny_model_dir):
    model = lora_model(tiny_model_dir, "none", use_dora=True)
    with fused_lora(model) as fused:
        assert fused == 0
    plain = lora_model(tiny_model_dir, "none")
    layer = plain.base_model.model.model.layers[0].self_attn.q_proj
    with fused_lora(plain):
        assert "forward" in vars(layer)
    assert "forward" not in vars(layer)  # the class's forward again
