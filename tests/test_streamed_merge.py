"""The shard-by-shard merge gives bit-identical weights to the in-memory merge_and_unload, for every quantization and
both base-weight choices, on a multi-shard checkpoint."""

import json

import pytest
import torch
from safetensors.torch import load_file

from llm_engineering.config import AdapterConfig, DataConfig, MergeConfig, ModelConfig, QuantizationConfig
from tests.conftest import prepared
from llm_engineering.merge.merge_adapter import merge_adapter
from llm_engineering.merge.streamed import StreamedMergeError, checkpoint_shards, streamed_merge
from llm_engineering.model.adapter import inject_adapter, save_adapter
from llm_engineering.model.loading import load_model


@pytest.fixture(scope="module")
def sharded_dir(tiny_model_dir, tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tmp_path_factory.mktemp("sharded")
    AutoModelForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(path, max_shard_size="200KB")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(path)
    return path


def make_adapter(model_cfg, path, **options):
    """An adapter with non-zero B (as after training), so the merge changes the weights."""
    peft_model, _ = inject_adapter(load_model(model_cfg), AdapterConfig(r=4, alpha=8, target_modules="all-linear",
                                                                        **options))
    generator = torch.Generator().manual_seed(0)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            param.data = torch.randn(param.shape, generator=generator, dtype=param.dtype) * 0.05
    save_adapter(peft_model, path)
    return path


def read_all(directory):
    tensors = {}
    for shard in checkpoint_shards(directory):
        tensors.update(load_file(directory / shard))
    return tensors


@pytest.mark.parametrize("method", ["none", "4bit", "8bit"])
@pytest.mark.parametrize("base_weights", ["dequantized", "original"])
def test_streamed_merge_is_bit_identical_to_merge_and_unload(sharded_dir, tmp_path, method, base_weights):
    assert len(checkpoint_shards(sharded_dir)) == 3  # embeddings, layer 0, layer 1
    model_cfg = ModelConfig(source="local", name_or_path=str(sharded_dir), dtype="bfloat16",
                            quantization=QuantizationConfig(method=method, compute_dtype="bfloat16"))
    adapter = make_adapter(model_cfg, tmp_path / "adapter", use_rslora=(method == "none"))
    cfg = MergeConfig(base_weights=base_weights, dtype="float32", max_logit_diff=1.0)
    rows = prepared(DataConfig(num_rows=10, eval_rows=2)).eval

    merge_adapter(model_cfg, cfg, adapter, rows, tmp_path / "in_memory")
    stats = streamed_merge(model_cfg, cfg, adapter, tmp_path / "streamed")

    expected, streamed = read_all(tmp_path / "in_memory"), read_all(tmp_path / "streamed")
    assert expected.keys() == streamed.keys()
    different = [k for k in expected if not torch.equal(expected[k], streamed[k])]
    assert different == []
    assert stats.merged_tensors == 14 and stats.shards == len(checkpoint_shards(sharded_dir))
    assert stats.round_tripped_tensors == (14 if base_weights == "dequantized" else 0)
    config = json.loads((tmp_path / "streamed" / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"


def test_streamed_merge_refuses_dora(sharded_dir, tmp_path):
    model_cfg = ModelConfig(source="local", name_or_path=str(sharded_dir), dtype="float32")
    adapter = make_adapter(model_cfg, tmp_path / "adapter", use_dora=True)
    with pytest.raises(StreamedMergeError, match="does not support DoRA"):
        streamed_merge(model_cfg, MergeConfig(), adapter, tmp_path / "out")


def test_streamed_method_in_merge_adapter_checks_fidelity_against_the_model_as_trained(sharded_dir, tmp_path):
    from llm_engineering.merge.fidelity import MergeFidelityError

    model_cfg = ModelConfig(source="local", name_or_path=str(sharded_dir), dtype="float32",
                            quantization=QuantizationConfig(method="4bit", compute_dtype="float32"))
    adapter = make_adapter(model_cfg, tmp_path / "adapter")
    rows = prepared(DataConfig(num_rows=10, eval_rows=2)).eval
    # the reference runs through bitsandbytes' 4-bit CPU kernels: a looser bound than the fp32-vs-fp32 in-memory check
    cfg = MergeConfig(method="streamed", dtype="float32", max_logit_diff=1e-2)
    report = merge_adapter(model_cfg, cfg, adapter, rows, tmp_path / "ok")
    assert report.comparison.startswith("model as trained") and report.top1_agreement == 1.0
    assert (tmp_path / "ok" / "tokenizer.json").is_file()

    (tmp_path / "bad").mkdir()
    with pytest.raises(MergeFidelityError, match="nothing was exported"):
        merge_adapter(model_cfg, MergeConfig(method="streamed", max_logit_diff=1e-12), adapter, rows, tmp_path / "bad")
    assert list((tmp_path / "bad").iterdir()) == []
