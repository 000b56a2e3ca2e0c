"""GGUF export through llama.cpp's own converter and quantizer, each file checked in llama.cpp (its tokenizer, its
next-token choices, where its greedy answer stops) before anything is exported; the Ollama Modelfile; the refusals.
The families' GGUF files are checked in tests/test_model_families.py."""

import json
import os
import sys

import gguf
import pytest
import torch

from llm_engineering.config import ConfigError, ModelConfig, load_run_config
from llm_engineering.export import gguf_file
from llm_engineering.export.export_dir import gguf_metrics, load_exported, verify_export, verify_manifest, write_export
from llm_engineering.export.gguf_file import GGUFError, check_model_supports_gguf
from llm_engineering.export.llama_cpp import FILE_TYPES, convert

ROWS = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in [
    ("Book a table for two at Casa Verde on Friday at 19:30 under the name Lee.",
     '{"name": "Lee", "party_size": 2, "restaurant": "Casa Verde", "day": "Friday", "time": "19:30"}'),
    ("What is the capital of France?", "Paris."),
    ("Ünïcödé — “quotes”, emoji 🦙 and\u2028a line separator", "ok"),
]]


def file_type(path) -> int:
    return int(gguf.GGUFReader(path).fields["general.file_type"].contents())


def test_f16_q8_0_and_q4_k_m_are_made_by_llama_cpp_checked_in_it_and_shipped_in_the_export(tiny_model_dir, tmp_path):
    model, tokenizer = load_exported(tiny_model_dir)
    out = write_export(model, tokenizer, tmp_path / "export", "card", gguf_types=["f16", "q8_0", "q4_k_m"],
                       check_rows=ROWS)
    metrics = gguf_metrics(out)
    assert metrics["gguf_f16_top1_agreement"] >= 0.99 and metrics["gguf_q8_0_top1_agreement"] >= 0.95
    assert metrics["gguf_q4_k_m_top1_agreement"] >= gguf_file.MIN_TOP1["q4_k_m"]
    assert 0 < metrics["gguf_q4_k_m_bytes"] < metrics["gguf_q8_0_bytes"] < metrics["gguf_f16_bytes"] == \
        (out / "model-f16.gguf").stat().st_size
    for gguf_type in ("f16", "q8_0", "q4_k_m"):  # what llama.cpp's tools wrote, by the file's own type
        assert file_type(out / f"model-{gguf_type}.gguf") == FILE_TYPES[gguf_type]
    reports = json.loads((out / "gguf_check.json").read_text())
    assert all(r["tokenizer_ids_equal"] for r in reports) and [r["gguf_type"] for r in reports] == ["f16", "q8_0",
                                                                                                      "q4_k_m"]
    # the template and end-of-turn token travel in the file: Ollama and llama-server use them
    fields = gguf.GGUFReader(out / "model-q4_k_m.gguf").fields
    assert fields["tokenizer.chat_template"].contents() == tokenizer.chat_template
    eos = int(fields["tokenizer.ggml.eos_token_id"].contents())
    assert eos == tokenizer.convert_tokens_to_ids("<|im_end|>")
    listed = (out / "SHA256SUMS").read_text()
    assert all(f"  {name}\n" in listed for name in ["model-f16.gguf", "model-q4_k_m.gguf", "Modelfile"])
    assert verify_manifest(out) == []
    modelfile = (out / "Modelfile").read_text()
    assert "FROM ./model-q4_k_m.gguf" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    # SmolLM2's template adds its own system prompt when a conversation has none; so does the Ollama template
    assert "{{ .Role }}" in modelfile and "You are a helpful AI assistant named SmolLM" in modelfile


def test_checking_a_gguf_leaves_a_bf16_model_as_it_was(tiny_model_dir, tmp_path):
    """The GGUF check of a bf16 export (merge.dtype auto on a CPU with native bf16) must not touch the model the
    export is then written from and verified against (a check once cast it up and back, leaving RoPE's buffer in
    bf16)."""
    model, tokenizer = load_exported(tiny_model_dir)
    model.to(torch.bfloat16).save_pretrained(tmp_path / "merged-bf16")  # as the merge step saves it
    tokenizer.save_pretrained(tmp_path / "merged-bf16")
    model, tokenizer = load_exported(tmp_path / "merged-bf16")
    assert model.dtype == torch.bfloat16
    buffers_before = {name: buffer.dtype for name, buffer in model.named_buffers()}
    batch = tokenizer(["Book a table for two at Casa Verde."], return_tensors="pt")
    logits_before = model(**batch).logits
    out = write_export(model, tokenizer, tmp_path / "export", "card", gguf_types=["f16"], check_rows=ROWS)
    assert {name: buffer.dtype for name, buffer in model.named_buffers()} == buffers_before
    assert torch.equal(model(**batch).logits, logits_before)
    assert verify_export(out, model, ROWS)[2] == 0.0
    assert gguf_metrics(out)["gguf_f16_top1_agreement"] >= 0.99


def wrong_tensor(path, name="blk.1.ffn_down.weight"):
    """A layout error in a written file: the rows of one f16 matrix in reverse order. (Not q or k: in a tiny random
    model attention is nearly uniform, and a wrong q moves the logits less than q8_0 rounding does.)"""
    reader = gguf.GGUFReader(path, "r+")
    [tensor] = [t for t in reader.tensors if t.name == name]
    tensor.data[...] = tensor.data[::-1].copy()
    tensor.data.flush()


def test_a_gguf_with_a_wrong_tensor_fails_its_check_in_llama_cpp_and_leaves_the_previous_export(
        tiny_model_dir, tmp_path, monkeypatch):
    model, tokenizer = load_exported(tiny_model_dir)
    out = write_export(model, tokenizer, tmp_path / "export", "card")
    before = (out / "SHA256SUMS").read_text()
    monkeypatch.setattr(gguf_file, "convert", lambda *a, **k: wrong_tensor(convert(*a, **k)) or a[1])
    with pytest.raises(GGUFError, match=r"model-f16.gguf does not reproduce the merged model in llama.cpp .* mean KL "
                                        r"divergence .* > 0.0001; nothing was exported"):
        write_export(model, tokenizer, out, "card 2", gguf_types=["f16", "q4_k_m"], check_rows=ROWS)
    assert (out / "SHA256SUMS").read_text() == before and not list(out.glob("*.gguf"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no staging or scratch left


def fake_tools(tmp_path, converter_source: str):
    """A tools directory whose converter is `converter_source`, stamped with the installed version."""
    from importlib import metadata

    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "convert_hf_to_gguf.py").write_text(converter_source)
    (tools / "VERSION").write_text(metadata.version("llama-cpp-python"))
    return tools


def test_a_converter_that_fails_halfway_is_named_and_the_previous_export_stays(tiny_model_dir, tmp_path,
                                                                               monkeypatch):
    model, tokenizer = load_exported(tiny_model_dir)
    out = write_export(model, tokenizer, tmp_path / "export", "card")
    before = (out / "SHA256SUMS").read_text()
    halfway = ("import sys\nout = sys.argv[sys.argv.index('--outfile') + 1]\nopen(out, 'wb').write(b'GGUF' + bytes(64))"
               "\nsys.exit('MemoryError: killed while writing blk.1.ffn_up.weight')\n")
    monkeypatch.setenv("LLAMA_CPP_TOOLS", str(fake_tools(tmp_path, halfway)))
    with pytest.raises(GGUFError, match=r"llama.cpp's converter failed on .*: MemoryError: killed while writing "
                                        r"blk.1.ffn_up.weight; nothing was exported"):
        write_export(model, tokenizer, out, "card 2", gguf_types=["q8_0"], check_rows=ROWS)
    assert (out / "SHA256SUMS").read_text() == before and not list(out.glob("*.gguf"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "tools"]


def test_quant_types_llama_cpp_cannot_make_are_refused_naming_the_ones_it_can():
    load_run_config({"export": {"gguf": ["f16", "q8_0", "q4_k_m", "q5_k_m", "q6_k"]}})
    with pytest.raises(ConfigError, match="'q3_xs' cannot be made here; use f16, q8_0, q4_k_m, q5_k_m, q6_k"):
        load_run_config({"export": {"gguf": ["q4_k_m", "q3_xs"]}})


def test_an_architecture_llama_cpps_converter_does_not_know_is_refused_when_the_pipeline_compiles(tiny_model_dir,
                                                                                                   tmp_path):
    import shutil

    unknown = tmp_path / "unknown"
    shutil.copytree(tiny_model_dir, unknown)
    config = json.loads((unknown / "config.json").read_text())
    (unknown / "config.json").write_text(json.dumps({**config, "architectures": ["BookingNetForCausalLM"]}))
    with pytest.raises(GGUFError, match="llama.cpp's converter failed on unknown: .*BookingNetForCausalLM"):
        check_model_supports_gguf(ModelConfig(source="local", name_or_path=str(unknown)), ["q4_k_m"])
    check_model_supports_gguf(ModelConfig(source="local", name_or_path=str(unknown)), [])  # none asked for
    check_model_supports_gguf(ModelConfig(source="local", name_or_path=str(tiny_model_dir)), ["f16", "q4_k_m"])


def test_without_llama_cpps_tools_gguf_is_refused_when_the_pipeline_compiles_naming_the_install(tiny_model_dir,
                                                                                                 tmp_path,
                                                                                                 monkeypatch):
    monkeypatch.setenv("LLAMA_CPP_TOOLS", str(tmp_path / "nowhere"))
    with pytest.raises(GGUFError, match=r"llama.cpp's converter, not found in .*nowhere: make install"):
        check_model_supports_gguf(ModelConfig(source="local", name_or_path=str(tiny_model_dir)), ["f16"])
    assert os.path.isfile(os.path.join(sys.prefix, "share", "llama.cpp", "convert_hf_to_gguf.py"))  # make install's


def test_llama_cpp_reads_a_whitespace_run_before_a_digit_as_one_token_where_smollm2s_tokenizer_reads_two(tmp_path):
    """Known and left: in a GGUF of SmolLM2 (the embedded model's vocabulary), llama.cpp encodes "\\n\\n" or two spaces
    before a digit as one token, transformers as two, so a prompt with a blank line before a number ("\\n\\n1. ...") is
    other ids there, and the export's check refuses a file whose check prompts hold one. When this fails, llama.cpp
    agrees: the tiny Llama 3's check rows (tests/test_model_families.py) no longer need to leave such rows out."""
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    from llm_engineering.model.embedded import embedded_model_dir

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    vocab = Llama(model_path=str(convert(embedded_model_dir(), tmp_path / "vocab.gguf", vocab_only=True)),
                  vocab_only=True, verbose=False)
    ids = {text: (tokenizer(text, add_special_tokens=False)["input_ids"],
                  vocab.tokenize(text.encode(), add_bos=False, special=True))
           for text in ["Hi\n\n2 people", "table for  4", "Hi\n\nTwo people", "user\n2 people"]}
    assert [hf == cpp for hf, cpp in ids.values()] == [False, False, True, True], ids
    hf, cpp = ids["Hi\n\n2 people"]
    tokens = tokenizer.convert_ids_to_tokens
    assert tokens(hf)[1:3] == ["Ċ", "Ċ"] and tokens(cpp)[1] == "ĊĊ"
