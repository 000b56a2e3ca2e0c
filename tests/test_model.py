"""Library tests on a tiny random-init Llama (real SmolLM2 tokenizer): loading, bitsandbytes 4-bit on CPU, adapter
injection, SFT, merge fidelity and export."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from llm_engineering.config import AdapterConfig, DataConfig, MergeConfig, TrainConfig
from tests.conftest import prepared
from llm_engineering.export.export_dir import ExportError, load_exported, verify_export, verify_manifest, write_export
from llm_engineering.export.model_card import model_card
from llm_engineering.merge.fidelity import MergeFidelityError
from llm_engineering.merge.merge_adapter import merge_adapter
from llm_engineering.model.adapter import AdapterConfigError, inject_adapter, save_adapter
from llm_engineering.model.loading import ModelLoadError, load_base, load_model, load_tokenizer
from llm_engineering.training.sft import build_trainer, train_adapter

FAST_TRAIN = TrainConfig(learning_rate=5e-3, max_steps=8, per_device_batch_size=4, logging_steps=1, eval_steps=8,
                         max_length=128, mixed_precision="no")


def test_4bit_load_on_cpu_quantizes_the_linear_layers(tiny_qlora_cfg, tiny_model_cfg):
    import bitsandbytes as bnb

    model, tokenizer, ref = load_base(tiny_qlora_cfg)
    assert model.is_loaded_in_4bit
    quantized = [n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) == 2 * 7  # q,k,v,o,gate,up,down in each of the 2 layers; lm_head stays unquantized
    full = load_base(tiny_model_cfg)[2]
    assert ref.footprint_bytes < full.footprint_bytes
    assert ref.num_parameters > 0 and len(ref.weights_sha256) == 64
    assert tokenizer.chat_template


def test_a_hub_checkpoint_is_pinned_to_the_commit_its_files_were_read_from(tiny_model_dir, tmp_path):
    """The hub cache's own layout, offline: models--<org>--<name>/snapshots/<commit>/, refs/<branch> naming the
    commit. load_base pins later steps to that commit, so a push to the hub between steps cannot change the weights."""
    from llm_engineering.model.loading import hub_commit

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--tiny-org--tiny-llama"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    assert hub_commit("tiny-org/tiny-llama", None, cache_dir=str(tmp_path)) == commit
    assert hub_commit("tiny-org/tiny-llama", "main", cache_dir=str(tmp_path)) == commit
    assert hub_commit("tiny-org/tiny-llama", commit, cache_dir=str(tmp_path)) == commit
    assert hub_commit("tiny-org/other-model", None, cache_dir=str(tmp_path)) is None  # not in the cache


def test_missing_checkpoint_and_pickle_only_checkpoint_are_refused(tmp_path, tiny_model_cfg):
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(tiny_model_cfg.model_copy(update={"name_or_path": str(tmp_path / "missing")}))
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ModelLoadError, match="no \\*.safetensors weights"):
        load_model(tiny_model_cfg.model_copy(update={"name_or_path": str(tmp_path)}))


def test_target_module_that_matches_nothing_lists_the_real_ones(tiny_model_cfg):
    model = load_model(tiny_model_cfg)
    with pytest.raises(AdapterConfigError) as err:
        inject_adapter(model, AdapterConfig(target_modules=["q_proj", "query_key_value"]))
    assert "['query_key_value'] match no linear module" in str(err.value)
    assert "'down_proj'" in str(err.value) and "'q_proj'" in str(err.value)


def test_trainable_parameters_are_counted_exactly(tiny_model_cfg, lora_cfg):
    _, stats = inject_adapter(load_model(tiny_model_cfg), lora_cfg)
    r, h, kv, inter = 4, 64, 32, 128  # tiny Llama: hidden 64, 2 kv heads x 16 dims, intermediate 128
    per_layer = r * ((h + h) + 2 * (h + kv) + (h + h) + 2 * (h + inter) + (inter + h))
    assert stats.trainable_parameters == 2 * per_layer
    assert stats.target_modules == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def test_labels_cover_the_completion_and_its_eos_but_not_padding(tiny_model_cfg, lora_cfg, small_data_cfg, tmp_path):
    tokenizer = load_tokenizer(tiny_model_cfg)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # the case where EOS is often never learned
    split = prepared(small_data_cfg)
    model, _ = inject_adapter(load_model(tiny_model_cfg), lora_cfg)
    trainer = build_trainer(model, tokenizer, tiny_model_cfg, lora_cfg, FAST_TRAIN, split.train, split.eval, tmp_path)
    rows = [trainer.train_dataset[i] for i in range(4)]
    batch = trainer.data_collator(rows)
    for i in range(4):
        labels = batch["labels"][i]
        trained = labels[labels != -100].tolist()
        answer = split.train[i]["messages"][-1]["content"]
        assert tokenizer.decode(trained) == answer + "<|im_end|>"  # the newline after it is context
        assert trained.count(tokenizer.eos_token_id) == 1  # its own EOS is trained; pad (same id) is not
    assert (batch["attention_mask"] == 0).any(), "the batch should contain padding for this check to mean anything"


@pytest.fixture(scope="module")
def trained_qlora(tmp_path_factory, tiny_model_dir):
    from llm_engineering.config import ModelConfig, QuantizationConfig

    model_cfg = ModelConfig(source="local", name_or_path=str(tiny_model_dir), dtype="float32",
                            quantization=QuantizationConfig(method="4bit", compute_dtype="float32"))
    adapter_cfg = AdapterConfig(r=4, alpha=8, dropout=0.0, target_modules="all-linear")
    split = prepared(DataConfig(num_rows=48, eval_rows=8))
    root = tmp_path_factory.mktemp("qlora")
    peft_model, _ = inject_adapter(load_model(model_cfg), adapter_cfg)
    save_adapter(peft_model, root / "initial")
    result = train_adapter(model_cfg, adapter_cfg, FAST_TRAIN, root / "initial", split.train, split.eval, root / "trained")
    return model_cfg, split, result


def test_sft_lowers_the_loss_and_saves_a_safetensors_adapter(trained_qlora):
    _, _, result = trained_qlora
    assert result.steps == FAST_TRAIN.max_steps
    assert result.final_train_loss < result.first_train_loss
    assert result.train_tokens > 0 and result.tokens_per_second > 0
    assert {p.name for p in result.adapter_dir.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}


@pytest.mark.parametrize("base_weights", ["dequantized", "original"])
def test_qlora_merge_is_faithful_in_fp32(trained_qlora, tmp_path, base_weights):
    model_cfg, split, result = trained_qlora
    cfg = MergeConfig(base_weights=base_weights, dtype="float32")
    report = merge_adapter(model_cfg, cfg, result.adapter_dir, split.eval, tmp_path)
    assert report.max_abs_logit_diff <= 1e-4 and report.top1_agreement == 1.0
    merged = load_exported(tmp_path)[0]
    assert not hasattr(merged.config, "quantization_config")  # a plain full-precision checkpoint


def test_dequantized_merge_folds_the_adapter_into_the_nf4_round_tripped_weights(trained_qlora, tmp_path):
    import bitsandbytes as bnb

    model_cfg, split, result = trained_qlora
    merge_adapter(model_cfg, MergeConfig(base_weights="dequantized", dtype="float32"), result.adapter_dir,
                  split.eval, tmp_path)
    merged = load_file(tmp_path / "model.safetensors")["model.layers.0.self_attn.q_proj.weight"]
    adapter = load_file(result.adapter_dir / "adapter_model.safetensors")
    # TRL keeps QLoRA adapter weights in bf16 (the QLoRA recipe); the merge upcasts them to fp32.
    a = adapter["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].float()
    b = adapter["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"].float()
    q4 = load_model(model_cfg).model.layers[0].self_attn.q_proj.weight
    dequantized = bnb.functional.dequantize_4bit(q4.data, q4.quant_state).float()
    torch.testing.assert_close(merged, dequantized + (8 / 4) * b @ a, atol=1e-6, rtol=0)
    original = load_model(model_cfg, quantize=False).model.layers[0].self_attn.q_proj.weight
    assert (merged - (original + 2 * b @ a)).abs().max() > 1e-4  # the round trip is real, not a no-op


def test_merge_fails_above_the_fidelity_threshold_and_writes_nothing(trained_qlora, tmp_path):
    model_cfg, split, result = trained_qlora
    with pytest.raises(MergeFidelityError, match="nothing was exported"):
        merge_adapter(model_cfg, MergeConfig(max_logit_diff=1e-12), result.adapter_dir, split.eval, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_merge_gates_on_the_weights_as_saved_not_only_in_fp32(trained_qlora, tmp_path, monkeypatch):
    from peft.tuners.lora import LoraModel

    model_cfg, split, result = trained_qlora
    report = merge_adapter(model_cfg, MergeConfig(dtype="bfloat16"), result.adapter_dir, split.eval, tmp_path / "ok")
    # bf16 rounding moves the logits (the fp32 merge check alone would not see it) but not the distribution
    assert report.saved_dtype == "bfloat16" and report.saved_max_abs_logit_diff > 10 * report.max_abs_logit_diff
    assert 0 < report.saved_mean_kl < MergeConfig().saved_max_kl
    with pytest.raises(MergeFidelityError, match="as saved in bfloat16 differ .* merge.saved_max_logit_diff"):
        merge_adapter(model_cfg, MergeConfig(dtype="bfloat16", saved_max_logit_diff=1e-6), result.adapter_dir,
                      split.eval, tmp_path / "bad")
    assert not (tmp_path / "bad").exists() or list((tmp_path / "bad").iterdir()) == []

    # a merge that leaves out one layer's updates is refused by the saved-weights check on its own (the fp32 check
    # made lenient here), naming the measure and what to look for
    merge = LoraModel.merge_and_unload

    def merge_without_layer_0(self, *args, **kwargs):
        for name, module in self.named_modules():
            if ".layers.0." in name and hasattr(module, "lora_B"):
                for weight in module.lora_B.values():
                    weight.weight.data.zero_()
        return merge(self, *args, **kwargs)

    monkeypatch.setattr(LoraModel, "merge_and_unload", merge_without_layer_0)
    with pytest.raises(MergeFidelityError, match=r"mean per-token KL divergence of [\d.e-]+ nats > "
                                                 r"merge.saved_max_kl = 0.001 .* a layer left out"):
        merge_adapter(model_cfg, MergeConfig(dtype="bfloat16", max_logit_diff=100.0), result.adapter_dir,
                      split.eval, tmp_path / "broken")


def test_the_export_ships_the_tokenizer_padding_as_the_base_had_it(trained_qlora, tmp_path, tiny_model_dir):
    import shutil

    from llm_engineering.evaluation import generate

    base = tmp_path / "left-padded-base"
    shutil.copytree(tiny_model_dir, base)
    config = json.loads((base / "tokenizer_config.json").read_text())
    (base / "tokenizer_config.json").write_text(json.dumps({**config, "padding_side": "left"}))
    model_cfg, split, result = trained_qlora
    model_cfg = model_cfg.model_copy(update={"name_or_path": str(base)})
    merge_adapter(model_cfg, MergeConfig(dtype="float32"), result.adapter_dir, split.eval, tmp_path / "merged")
    model, tokenizer = load_exported(tmp_path / "merged")
    assert tokenizer.padding_side == "left"
    tokenizer.padding_side = "right"
    generate(model, tokenizer, [[{"role": "user", "content": "hi"}]], max_new_tokens=2, batch_size=1)
    verify_export(write_export(model, tokenizer, tmp_path / "export", "card"), model, split.eval.to_list()[:2])
    assert tokenizer.padding_side == "right"  # neither generation (left) nor the logits check changed it
    assert json.loads((tmp_path / "export" / "tokenizer_config.json").read_text())["padding_side"] == "right"


def test_generation_config_keeps_every_end_token_of_the_base(tokenizer):
    from llm_engineering.export.export_dir import generation_config

    im_end = tokenizer.eos_token_id
    llama31_like = generation_config(tokenizer, {"eos_token_id": [0, 7, 9], "bos_token_id": 1})
    assert llama31_like["eos_token_id"] == [0, 7, 9, im_end]  # the template's end-of-turn token is among them
    assert generation_config(tokenizer, {"eos_token_id": [im_end, 0]})["eos_token_id"] == [im_end, 0]
    assert generation_config(tokenizer, {"eos_token_id": im_end})["eos_token_id"] == im_end


@pytest.fixture
def merged(trained_qlora, tmp_path):
    model_cfg, split, result = trained_qlora
    merge_adapter(model_cfg, MergeConfig(dtype="float32"), result.adapter_dir, split.eval, tmp_path / "merged")
    model, tokenizer = load_exported(tmp_path / "merged")
    card = model_card("tiny", {"fingerprint": "abc"}, {"adapter": {"r": 4}}, {"finetuned_json_exact_match": 1.0})
    return model, tokenizer, card, result.adapter_dir, split


def test_export_is_complete_sharded_and_reproduces_the_merged_logits(merged, tmp_path):
    model, tokenizer, card, adapter_dir, split = merged
    out = write_export(model, tokenizer, tmp_path / "export", card, adapter_dir=adapter_dir, max_shard_size="4MB",
                       overwrite=False)
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    shards = sorted(n for n in names if n.startswith("model-") and n.endswith(".safetensors"))
    # 12.6 MB fp32 embedding (a tensor is never split) + the layers: two shards and an index
    assert len(shards) == 2 and "model.safetensors.index.json" in names
    assert {"config.json", "tokenizer.json", "chat_template.jinja", "README.md", "SHA256SUMS",
            "adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= names
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokenizer.eos_token_id == generation["pad_token_id"]
    assert "| finetuned_json_exact_match | 1 |" in (out / "README.md").read_text()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no partial directories left

    _, _, max_diff = verify_export(out, model, split.eval.to_list()[:2])
    assert max_diff == 0.0  # same weights, same dtype: bit-identical logits
    with pytest.raises(ExportError, match="already exists and export.overwrite is false"):
        write_export(model, tokenizer, out, card, overwrite=False)


def test_manifest_catches_a_changed_missing_or_extra_file(merged, tmp_path):
    model, tokenizer, card, _, _ = merged
    out = write_export(model, tokenizer, tmp_path / "export", card)
    assert verify_manifest(out) == []
    (out / "config.json").write_text((out / "config.json").read_text() + " ")
    (out / "tokenizer.json").unlink()
    (out / "notes.txt").write_text("x")
    assert verify_manifest(out) == ["config.json: checksum mismatch", "tokenizer.json: missing",
                                    "notes.txt: not in the manifest"]
    with pytest.raises(ExportError, match="manifest check failed"):
        verify_export(out, model, [])


def test_an_interrupted_export_leaves_the_previous_one_and_no_partial_directory(merged, tmp_path, monkeypatch):
    model, tokenizer, card, _, _ = merged
    out = write_export(model, tokenizer, tmp_path / "export", card)
    before = (out / "SHA256SUMS").read_text()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tokenizer, "save_pretrained", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_export(model, tokenizer, out, card + "changed")
    assert (out / "SHA256SUMS").read_text() == before and verify_manifest(out) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "merged"]


def test_embedded_model_is_a_real_pretrained_instruct_model():
    from llm_engineering.config import ModelConfig
    from llm_engineering.evaluation import generate

    cfg = ModelConfig(source="embedded", dtype="float32")
    model, tokenizer = load_model(cfg, quantize=False), load_tokenizer(cfg)
    [(answer, stopped)] = generate(model, tokenizer, [[{"role": "user", "content": "What is the capital of France?"}]],
                                   max_new_tokens=20, batch_size=1)
    assert "Paris" in answer and stopped


def test_hub_push_needs_a_token_from_the_environment(monkeypatch):
    from llm_engineering.export.export_dir import check_push_credentials

    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(ExportError, match="needs a Hugging Face token in the HF_TOKEN environment variable"):
        check_push_credentials("me/my-model")
    check_push_credentials(None)


def test_a_failed_hub_push_names_the_repo_and_keeps_the_export(merged, tmp_path, monkeypatch):
    from llm_engineering.export.export_dir import push_to_hub

    model, tokenizer, card, _, _ = merged
    out = write_export(model, tokenizer, tmp_path / "export", card)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ExportError, match="push to hub 'me/my-model' failed .* local export .* is complete"):
        push_to_hub(out, "me/my-model")
    assert verify_manifest(out) == []


def test_an_adapter_rank_vllm_refuses_is_warned_about_and_the_card_says_how_to_serve(caplog):
    from llm_engineering.export.model_card import check_vllm_rank

    assert check_vllm_rank(16) is None
    with caplog.at_level("WARNING"):
        warning = check_vllm_rank(12)
    assert "adapter.r=12" in warning and "vLLM" in caplog.text
    config = {"adapter": {"r": 12}, "export": {"output_dir": "outputs/booking", "gguf": ["q8_0"]}}
    card = model_card("HuggingFaceTB/SmolLM2-135M-Instruct", {}, config, {})
    assert "vllm serve HuggingFaceTB/SmolLM2-135M-Instruct --enable-lora" in card
    assert "--lora-modules booking=<this directory>/adapter` (rank 12: vLLM will refuse it)" in card
    assert "`model-q8_0.gguf`" in card and "ollama create" in card
