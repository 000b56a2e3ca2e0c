"""The fused LoRA linear computes what PEFT's LoRA layers compute: same loss and same gradients, on a dense and on a
bitsandbytes 4-bit base, under bf16 autocast too; layers it does not cover keep PEFT's forward."""

import pytest
import torch

from llm_engineering.config import AdapterConfig, ModelConfig, QuantizationConfig
from llm_engineering.model.adapter import inject_adapter, prepare_for_training
from llm_engineering.model.loading import load_model
from llm_engineering.training.fused_lora import fused_lora


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


@pytest.mark.parametrize("gradient_checkpointing", [False, True])
def test_training_with_and_without_fused_layers_gives_the_same_adapter(tiny_model_dir, tmp_path,
                                                                        gradient_checkpointing):
    """Through train_adapter: the Trainer, our loss, fp32 adapter weights on a 4-bit base, and with gradient
    checkpointing the recomputed forward."""
    from safetensors.torch import load_file

    from llm_engineering.config import DataConfig, TrainConfig
    from llm_engineering.model.adapter import save_adapter
    from llm_engineering.training.sft import train_adapter
    from tests.conftest import prepared

    model_cfg = ModelConfig(source="local", name_or_path=str(tiny_model_dir), dtype="float32",
                            quantization=QuantizationConfig(method="4bit", compute_dtype="float32"))
    adapter = AdapterConfig(r=4, alpha=8, dropout=0.0, target_modules="all-linear",
                            gradient_checkpointing=gradient_checkpointing)
    save_adapter(lora_model(tiny_model_dir, "4bit"), tmp_path / "initial")
    split = prepared(DataConfig(num_rows=20, eval_rows=4), 160)
    start = load_file(tmp_path / "initial" / "adapter_model.safetensors")
    updates, losses = {}, {}
    for fused in (False, True):
        train = TrainConfig(learning_rate=5e-3, max_steps=3, per_device_batch_size=4, logging_steps=1, eval_steps=100,
                            max_length=160, mixed_precision="no", fused_lora=fused)
        out = tmp_path / f"fused-{fused}"
        result = train_adapter(model_cfg, adapter, train, tmp_path / "initial", split.train, split.eval, out)
        trained = load_file(out / "adapter_model.safetensors")
        assert all(t.dtype == torch.float32 for t in trained.values())
        losses[fused] = [e["loss"] for e in result.log_history if "loss" in e]
        updates[fused] = torch.cat([(t - start[k]).flatten() for k, t in sorted(trained.items())])
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
    assert updates[False].norm() > 0
    # Adam divides by sqrt(v): where a weight's gradient is ~0, rounding noise of either path becomes an update of up
    # to lr size (8 of 8192 weights on the synthetic rows), so the whole update is compared, not each element
    difference = (updates[True] - updates[False]).norm() / updates[False].norm()
    assert difference < 1e-3, f"fused and PEFT adapters differ by {difference:.2e} of the update"


def test_adapter_weights_stay_float32_on_a_quantized_base_unless_asked(tiny_model_dir, tmp_path):
    """TRL casts a quantized model's LoRA weights to bf16; train.adapter_dtype decides (default float32)."""
    from llm_engineering.config import DataConfig, TrainConfig
    from llm_engineering.model.loading import load_tokenizer
    from llm_engineering.training.sft import build_trainer
    from tests.conftest import prepared

    split = prepared(DataConfig(num_rows=8, eval_rows=4), 160)
    model_cfg = ModelConfig(source="local", name_or_path=str(tiny_model_dir), dtype="float32",
                            quantization=QuantizationConfig(method="4bit", compute_dtype="float32"))
    for adapter_dtype, expected in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        model = lora_model(tiny_model_dir, "4bit")
        train = TrainConfig(max_steps=1, mixed_precision="no", adapter_dtype=adapter_dtype)
        trainer = build_trainer(model, load_tokenizer(model_cfg), model_cfg, AdapterConfig(), train, split.train,
                                split.eval, tmp_path / adapter_dtype)
        assert {p.dtype for p in trainer.model.parameters() if p.requires_grad} == {expected}
