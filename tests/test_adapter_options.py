"""Every LoRA option on the tiny Llama: it is accepted, checked against the model, counted as PEFT counts it, trains,
and merges faithfully (QLoRA base, fp32 merge)."""

import pytest
import torch

from llm_engineering.config import AdapterConfig, ConfigError, DataConfig, MergeConfig, TrainConfig, load_run_config
from tests.conftest import prepared
from llm_engineering.merge.merge_adapter import merge_adapter
from llm_engineering.model.adapter import AdapterConfigError, inject_adapter, resolve_target_modules, save_adapter
from llm_engineering.model.loading import load_model, load_tokenizer
from llm_engineering.training.sft import train_adapter

H, KV, INTER, LAYERS = 64, 32, 128, 2  # tiny Llama (conftest)
ATTN = {"q_proj": (H, H), "k_proj": (H, KV), "v_proj": (H, KV), "o_proj": (H, H)}
MLP = {"gate_proj": (H, INTER), "up_proj": (H, INTER), "down_proj": (INTER, H)}


def lora_params(r, modules, layers=LAYERS, dora=False):
    """LoRA A (r x in) + B (out x r) per module, plus DoRA's magnitude vector (out)."""
    per_layer = sum(r * (i + o) + (o if dora else 0) for i, o in modules.values())
    return per_layer * layers


OPTIONS = {
    "fastchat": (dict(r=8, alpha=16, dropout=0.05, target_modules=["q_proj", "v_proj"]),
                 lora_params(8, {k: ATTN[k] for k in ("q_proj", "v_proj")})),
    "handbook": (dict(r=32, alpha=32, dropout=0.0,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
                 lora_params(32, {**ATTN, **MLP})),
    "preset_attention": (dict(r=4, target_modules="attention"), lora_params(4, ATTN)),
    "preset_mlp": (dict(r=4, target_modules="mlp"), lora_params(4, MLP)),
    "regex": (dict(r=4, target_modules=r".*\.layers\.1\.self_attn\.(q|v)_proj"),
              lora_params(4, {k: ATTN[k] for k in ("q_proj", "v_proj")}, layers=1)),
    "layers_to_transform": (dict(r=4, target_modules="all-linear", layers_to_transform=[0]),
                            lora_params(4, {**ATTN, **MLP}, layers=1)),
    "rslora": (dict(r=4, alpha=8, target_modules="all-linear", use_rslora=True), lora_params(4, {**ATTN, **MLP})),
    "dora": (dict(r=4, target_modules=["q_proj", "v_proj"], use_dora=True),
             lora_params(4, {k: ATTN[k] for k in ("q_proj", "v_proj")}, dora=True)),
    "gaussian_init_bias_all": (dict(r=4, target_modules="mlp", init_lora_weights="gaussian", bias="all"),
                               lora_params(4, MLP)),
}
TRAIN = TrainConfig(learning_rate=5e-3, max_steps=2, per_device_batch_size=4, logging_steps=1, eval_steps=2,
                    max_length=128, mixed_precision="no")


@pytest.mark.parametrize("name", list(OPTIONS))
def test_option_injects_counts_trains_and_merges_faithfully(name, tiny_qlora_cfg, tmp_path):
    settings, expected_trainable = OPTIONS[name]
    cfg = AdapterConfig(**settings)
    peft_model, stats = inject_adapter(load_model(tiny_qlora_cfg), cfg)
    assert stats.trainable_parameters == expected_trainable
    assert stats.trainable_parameters == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    save_adapter(peft_model, tmp_path / "initial")

    split = prepared(DataConfig(num_rows=24, eval_rows=4))
    result = train_adapter(tiny_qlora_cfg, cfg, TRAIN, tmp_path / "initial", split.train, split.eval, tmp_path / "ad")
    assert result.steps == TRAIN.max_steps and result.final_train_loss == result.final_train_loss  # ran, not NaN
    report = merge_adapter(tiny_qlora_cfg, MergeConfig(dtype="float32"), tmp_path / "ad", split.eval, tmp_path / "m")
    assert report.max_abs_logit_diff <= 1e-4 and report.top1_agreement == 1.0


def test_modules_to_save_trains_a_full_copy(tiny_model_cfg):
    model = load_model(tiny_model_cfg)
    cfg = AdapterConfig(r=4, target_modules=["q_proj"], modules_to_save=["model.norm"])
    _, stats = inject_adapter(model, cfg)
    assert stats.trainable_parameters == lora_params(4, {"q_proj": ATTN["q_proj"]}) + H


def test_presets_resolve_from_the_model_structure(tiny_model_cfg):
    model = load_model(tiny_model_cfg)
    assert resolve_target_modules(model, AdapterConfig(target_modules="attention")) == sorted(ATTN)
    assert resolve_target_modules(model, AdapterConfig(target_modules="mlp")) == sorted(MLP)
    assert resolve_target_modules(model, AdapterConfig(target_modules="all")) == "all-linear"


@pytest.mark.parametrize("settings, message", [
    (dict(target_modules=r"model\.layers\.\d+\.attention\.wq"), "regex .* matches no linear module"),
    (dict(target_modules=["self_attn.q_proj", "c_attn"]), r"\['c_attn'\] match no linear module"),
    (dict(modules_to_save=["score"]), r"modules_to_save: \['score'\] are not modules"),
    (dict(layers_to_transform=[5]), r"out of range; the model has layers 0..1"),
])
def test_settings_that_do_not_fit_the_model_are_refused_with_what_it_has(tiny_model_cfg, settings, message):
    with pytest.raises(AdapterConfigError, match=message):
        inject_adapter(load_model(tiny_model_cfg), AdapterConfig(**settings))


def test_invalid_regex_and_empty_layers_fail_config_validation():
    with pytest.raises(ConfigError, match="nor a valid regex"):
        load_run_config({"adapter": {"target_modules": "q_proj("}})
    with pytest.raises(ConfigError, match="layers_to_transform must list"):
        load_run_config({"adapter": {"layers_to_transform": []}})


LOFTQ = pytest.param("loftq", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="PEFT's LoftQ needs CUDA"))


@pytest.mark.parametrize("init", ["pissa", "pissa_niter_2", LOFTQ])
def test_data_driven_inits_train_and_merge_faithfully(init, tiny_model_dir, tmp_path):
    from llm_engineering.config import ModelConfig, QuantizationConfig

    method = "4bit" if init == "loftq" else "none"
    model_cfg = ModelConfig(source="local", name_or_path=str(tiny_model_dir), dtype="float32",
                            quantization=QuantizationConfig(method=method, compute_dtype="float32"))
    cfg = AdapterConfig(r=4, alpha=4, dropout=0.0, target_modules="all-linear", init_lora_weights=init)
    peft_model, stats = inject_adapter(load_model(model_cfg), cfg, str(tiny_model_dir))
    assert stats.trainable_parameters == lora_params(4, {**ATTN, **MLP})
    b = peft_model.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight
    assert b.abs().max() > 0  # unlike the default init, B starts non-zero
    save_adapter(peft_model, tmp_path / "initial")

    split = prepared(DataConfig(num_rows=24, eval_rows=4))
    train_adapter(model_cfg, cfg, TRAIN, tmp_path / "initial", split.train, split.eval, tmp_path / "ad")
    merge = MergeConfig(base_weights="original" if init.startswith("pissa") else "dequantized", dtype="float32")
    report = merge_adapter(model_cfg, merge, tmp_path / "ad", split.eval, tmp_path / "m")
    assert report.max_abs_logit_diff <= 1e-4
    if init.startswith("pissa"):  # converted to a plain LoRA of rank 2r for the original weights
        import json
        assert json.loads((tmp_path / "ad" / "adapter_config.json").read_text())["r"] == 8


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_loftq_without_cuda_is_refused_before_loading(tiny_model_dir):
    from llm_engineering.model.adapter import check_init_supported

    with pytest.raises(AdapterConfigError, match="loftq needs a CUDA GPU"):
        check_init_supported(AdapterConfig(init_lora_weights="loftq"))


def test_pissa_export_equals_the_trained_residual_model(tiny_model_dir, tmp_path):
    """The converted adapter on the original base reproduces what was trained (residual base + PiSSA adapter)."""
    from llm_engineering.config import ModelConfig, QuantizationConfig
    from llm_engineering.export.export_dir import load_exported
    from llm_engineering.training.sft import build_trainer

    model_cfg = ModelConfig(source="local", name_or_path=str(tiny_model_dir), dtype="float32",
                            quantization=QuantizationConfig(method="none"))
    cfg = AdapterConfig(r=4, alpha=4, dropout=0.0, target_modules="all-linear", init_lora_weights="pissa")
    peft_model, _ = inject_adapter(load_model(model_cfg), cfg)
    save_adapter(peft_model, tmp_path / "initial")
    split = prepared(DataConfig(num_rows=24, eval_rows=4))
    trainer = build_trainer(peft_model, load_tokenizer(model_cfg), model_cfg, cfg, TRAIN,
                            split.train, split.eval, tmp_path / "scratch")
    trainer.train()
    save_adapter(trainer.model, tmp_path / "ad", initial_adapter=tmp_path / "initial")
    merge_adapter(model_cfg, MergeConfig(base_weights="original", dtype="float32"), tmp_path / "ad", split.eval,
                  tmp_path / "m")
    ids = torch.tensor([[1, 520, 2840, 30, 2]])
    peft_model.eval()
    with torch.no_grad():
        trained = peft_model(input_ids=ids).logits
        exported = load_exported(tmp_path / "m")[0](input_ids=ids).logits
    assert (trained - exported).abs().max() < 1e-3
