"""Every model family users bring, through every stage's library entry point (the ones the steps call): a tiny random
checkpoint per family (tests/model_families.py) with its traits and chat format, loaded unquantized and in 4 bits,
its target presets resolved to its own module names, trained, merged in memory and streamed, exported and reloaded by
plain transformers."""

import json

import pytest
import torch
from safetensors import safe_open

from llm_engineering.config import AdapterConfig, DataConfig, MergeConfig, ModelConfig, QuantizationConfig, TrainConfig
from llm_engineering.data.prepare import prepare
from llm_engineering.data.templates import render, row_text
from llm_engineering.export.export_dir import verify_export, write_export
from llm_engineering.merge.merge_adapter import merge_adapter
from llm_engineering.model.adapter import inject_adapter, resolve_target_modules, save_adapter
from llm_engineering.model.loading import ModelLoadError, load_base, load_model, load_tokenizer
from llm_engineering.training.sft import train_adapter
from tests.model_families import FAMILIES, family_attention
from tests.test_streamed_merge import read_all

TRAIN = TrainConfig(learning_rate=5e-3, max_steps=2, per_device_batch_size=4, logging_steps=1, eval_steps=2,
                    max_length=256, mixed_precision="no")
CONVERSATION = [{"role": "system", "content": "Answer in JSON."},
                {"role": "user", "content": "Table for 2 at Café Müller, 19:30 — name: Zoë\u2028O'Brien"},
                {"role": "assistant", "content": '{"name": "Zoë O\'Brien", "people": 2, "time": "19:30"}'}]


def model_cfg(path, quantization="none", **options) -> ModelConfig:
    return ModelConfig(source="local", name_or_path=str(path), dtype="float32",
                       quantization=QuantizationConfig(method=quantization, compute_dtype="float32"), **options)


def safetensors_keys(directory) -> set:
    keys = set()
    for file in directory.glob("*.safetensors"):
        with safe_open(file, "pt") as handle:
            keys |= set(handle.keys())
    return keys


@pytest.mark.parametrize("name", list(FAMILIES))
def test_each_family_loads_trains_merges_and_exports_as_itself(name, family_checkpoint, tmp_path):
    family, path = FAMILIES[name], family_checkpoint(name)
    qlora, plain = model_cfg(path, "4bit"), model_cfg(path)

    # the family's chat format: its end-of-turn token is what generation stops on, and text round-trips
    tokenizer = load_tokenizer(qlora)
    assert tokenizer.eos_token == family.end_of_turn
    text = render(tokenizer, CONVERSATION)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    # text round-trips; a legacy SentencePiece tokenizer (Mistral v0.1/v0.2's, Phi-3's) decodes the space it puts
    # after a special token, and Phi-3's markers swallow the newline after them, so there the ids do
    decoded = tokenizer.decode(ids)
    assert decoded == text if not family.legacy else tokenizer(decoded, add_special_tokens=False)["input_ids"] == ids
    if family.sentencepiece:  # a SentencePiece vocabulary: byte-fallback pieces, words marked with ▁
        assert {"<0x00>", "<0xFF>"} <= set(tokenizer.get_vocab()) and (path / "tokenizer.model").is_file()
    for marker in family.special_tokens:  # each turn marker is one token, as the model must learn to emit it
        assert len(tokenizer(marker, add_special_tokens=False)["input_ids"]) == 1, marker

    # loads as itself, with an attention implementation the family supports; presets name its own modules
    base, _, ref = load_base(plain)
    assert type(base).__name__ == family.model_class
    assert base.config._attn_implementation == ("eager" if name == "gemma2" else "sdpa")
    assert resolve_target_modules(base, AdapterConfig(target_modules="attention")) == sorted(family_attention(family))
    assert resolve_target_modules(base, AdapterConfig(target_modules="mlp")) == sorted(family.mlp)
    assert resolve_target_modules(base, AdapterConfig(target_modules="all")) == "all-linear"
    quantized = load_model(qlora)
    assert ref.footprint_bytes > quantized.get_memory_footprint()

    # QLoRA on every linear layer (fused ones included), two steps
    adapter_cfg = AdapterConfig(r=4, alpha=8, target_modules="all-linear")
    peft_model, stats = inject_adapter(quantized, adapter_cfg)
    adapted = {n.rsplit(".", 1)[-1] for n, _ in peft_model.named_modules() if n.endswith(".lora_A")}
    assert {n.split(".")[-2] for n, _ in peft_model.named_modules() if n.endswith(".lora_A")} == \
        set(family_attention(family)) | set(family.mlp), adapted
    save_adapter(peft_model, tmp_path / "initial")
    split = prepare(DataConfig(num_rows=24, eval_rows=4), tokenizer, TRAIN.max_length)
    result = train_adapter(qlora, adapter_cfg, TRAIN, tmp_path / "initial", split.train, split.eval,
                           tmp_path / "adapter")
    assert result.steps == 2 and result.final_train_loss == result.final_train_loss  # ran, not NaN

    # merged in memory and shard by shard: the same bytes, faithful to the adapter model
    merge = MergeConfig(dtype="float32", base_weights="original")
    report = merge_adapter(qlora, merge, tmp_path / "adapter", split.eval, tmp_path / "in_memory")
    assert report.top1_agreement == 1.0 and report.max_abs_logit_diff <= 1e-4
    merge_adapter(qlora, merge.model_copy(update={"method": "streamed", "max_logit_diff": 1.0}),
                  tmp_path / "adapter", split.eval, tmp_path / "streamed")
    in_memory, streamed = read_all(tmp_path / "in_memory"), read_all(tmp_path / "streamed")
    assert in_memory.keys() == streamed.keys()
    for key in in_memory:
        assert torch.equal(in_memory[key], streamed[key]), key

    # exported: plain transformers reloads it with the merged model's logits, tied where the base was tied
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "in_memory")
    gguf_types = ["f16", "q4_k_m"] if name in GGUF_CHECKED else []
    check_rows = [split.eval[i] for i in range(4)]
    if name in BLANK_LINE_BEFORE_MESSAGES:  # llama.cpp splits "\n\n" before a digit its own way here (test_gguf.py)
        check_rows = [row for row in [*split.eval, *split.train]
                      if not any(m["content"][:1].isdigit() for m in row["messages"])][:4]
    export = write_export(merged, tokenizer, tmp_path / "export", "card", gguf_types=gguf_types, check_rows=check_rows)
    reloaded, exported_tokenizer, diff = verify_export(export, merged, [split.eval[i] for i in range(4)])
    assert diff <= 1e-5
    config = json.loads((export / "config.json").read_text())
    assert config.get("tie_word_embeddings", False) == family.tied
    assert ("lm_head.weight" in safetensors_keys(export)) == (not family.tied)  # a tied head is saved once
    assert render(exported_tokenizer, CONVERSATION) == text
    if family.sentencepiece:  # the SentencePiece model travels with the export (transformers 5 writes only JSON)
        assert (export / "tokenizer.model").read_bytes() == (path / "tokenizer.model").read_bytes()
    generation = json.loads((export / "generation_config.json").read_text())
    ids = exported_tokenizer.convert_tokens_to_ids
    expected_ends = {ids(family.end_of_turn), *(ids(t) for t in family.end_tokens)}
    assert expected_ends <= set(generation["eos_token_id"] if isinstance(generation["eos_token_id"], list)
                                else [generation["eos_token_id"]])
    if gguf_types:  # llama.cpp's converter and quantizer, each file checked in llama.cpp against the merged model
        reports = json.loads((export / "gguf_check.json").read_text())
        assert [r["gguf_type"] for r in reports] == gguf_types and all(r["tokenizer_ids_equal"] for r in reports)
        assert reports[0]["top1_agreement"] >= 0.99 and reports[0]["mean_kl"] <= 1e-4


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    """An MLflow tracking store of this module's own (the export step logs the chat model into the run's store)."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}")
    yield
    mlflow.set_tracking_uri(previous)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_each_familys_chat_model_in_mlflow_answers_as_the_export_does(name, family_checkpoint, mlflow_store, tmp_path):
    """As the export step logs it: the exported model as MLflow's `llm/v1/chat` model (what `mlflow models serve`
    answers OpenAI-style chat requests with), loaded back through MLflow's own pyfunc, answers a chat prompt exactly
    as the export's own greedy generation does (its serving sample), through the family's chat template."""
    import mlflow

    from llm_engineering.export.export_dir import serving_sample
    from llm_engineering.tracking import log_and_register_model

    cfg = model_cfg(family_checkpoint(name))
    model, tokenizer = load_model(cfg), load_tokenizer(cfg)
    rows = prepare(DataConfig(num_rows=8, eval_rows=2), tokenizer, 256).eval
    exported, exported_tokenizer, _ = verify_export(write_export(model, tokenizer, tmp_path / "export", "card"),
                                                    model, rows)
    sample = serving_sample(exported, exported_tokenizer, rows, max_tokens=12)
    with mlflow.start_run():
        logged = log_and_register_model(exported, exported_tokenizer, registered_model_name=None, max_tokens=12)
    served = mlflow.pyfunc.load_model(logged["model_uri"])
    [completion] = served.predict({"messages": sample["messages"], "max_tokens": sample["max_tokens"]})
    assert completion["object"] == "chat.completion"
    assert completion["choices"][0]["message"] == {"role": "assistant", "content": sample["content"]}


# The families whose tiny checkpoints llama.cpp reproduces (bench/results/gguf_fidelity.json): all but Qwen2, whose
# hybrid tokenizer (the Qwen2 pre-tokenizer over SmolLM2's vocabulary, which no real model has) is refused when the
# pipeline compiles (test below). Mistral's and Phi-3's reproduce only with their tokenizers as the real ones are
# (legacy SentencePiece; Phi-3's markers rstrip) and Phi-3's GGUF named so that llama.cpp knows it (export/llama_cpp.py).
# Templates that put a blank line before each message's text, over SmolLM2's vocabulary and pre-tokenizer (the tiny
# checkpoint's, not the real Llama 3's): llama.cpp encodes "\n\n" before a digit as one token, transformers as two.
BLANK_LINE_BEFORE_MESSAGES = {"llama3"}
GGUF_CHECKED = ("llama3", "qwen3", "gemma2", "gemma3", "mistral", "phi3")


def test_a_tokenizer_llama_cpp_does_not_know_is_refused_gguf_when_the_pipeline_compiles(family_checkpoint):
    from llm_engineering.export.gguf_file import GGUFError, check_model_supports_gguf

    with pytest.raises(GGUFError, match="converter failed on qwen2.*BPE pre-tokenizer was not recognized"):
        check_model_supports_gguf(model_cfg(family_checkpoint("qwen2")), ["q4_k_m"])


def test_llama_cpp_tokenizes_phi3s_turns_as_transformers_only_in_a_gguf_named_phi3(family_checkpoint, tmp_path,
                                                                                     monkeypatch):
    """llama.cpp decides by the GGUF's name that Phi-3's markers swallow the newline after them: a fine-tune exported
    as `booking` is named `booking-phi3`. Fails when llama.cpp stops needing (or changes) the rule."""
    import shutil

    import llama_cpp

    from llm_engineering.export import llama_cpp as tools
    from llm_engineering.model.loading import save_tokenizer

    tokenizer = load_tokenizer(model_cfg(family_checkpoint("phi3")))
    export = tmp_path / "booking"
    save_tokenizer(tokenizer, export)
    shutil.copyfile(family_checkpoint("phi3") / "config.json", export / "config.json")
    text = render(tokenizer, CONVERSATION)
    expected = tokenizer(text, add_special_tokens=False)["input_ids"]

    def llama_cpp_ids(gguf):
        vocab = llama_cpp.Llama(str(gguf), vocab_only=True, verbose=False)
        try:
            return vocab.tokenize(text.encode(), add_bos=False, special=True)
        finally:
            vocab.close()

    named = tools.convert(export, tmp_path / "named.gguf", vocab_only=True)
    monkeypatch.setattr(tools, "NAME_MARKS", {})
    unnamed = tools.convert(export, tmp_path / "unnamed.gguf", vocab_only=True)
    assert llama_cpp_ids(named) == expected
    assert llama_cpp_ids(unnamed) != expected


def test_an_attention_the_family_cannot_run_is_refused_before_the_weights_load(family_checkpoint):
    with pytest.raises(ModelLoadError, match=r"model.attn_implementation=sdpa: Gemma2ForCausalLM .* eager"):
        load_base(model_cfg(family_checkpoint("gemma2"), attn_implementation="sdpa"))


@pytest.mark.parametrize("settings", [
    dict(target_modules=["q_proj", "lm_head"]),
    dict(target_modules=["q_proj", "embed_tokens"]),
    dict(target_modules=["q_proj"], modules_to_save=["lm_head"]),
], ids=["lora_head", "lora_embeddings", "saved_head"])
def test_an_adapter_on_a_tied_head_merges_exports_and_reloads_as_the_adapter_model_computes(settings,
                                                                                          family_checkpoint, tmp_path):
    """Qwen2.5-0.5B's trap (transformers#45127, peft#2018): the head and the embeddings are one tensor."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = model_cfg(family_checkpoint("qwen2"))
    peft_model, _ = inject_adapter(load_model(cfg), AdapterConfig(r=4, alpha=8, **settings))
    generator = torch.Generator().manual_seed(0)
    for name, param in peft_model.named_parameters():  # as after training: every trainable tensor moved
        if param.requires_grad:
            param.data += torch.randn(param.shape, generator=generator) * 0.05
    save_adapter(peft_model, tmp_path / "adapter")
    tokenizer = load_tokenizer(cfg)
    rows = prepare(DataConfig(num_rows=8, eval_rows=2), tokenizer, 256).eval

    report = merge_adapter(cfg, MergeConfig(dtype="float32"), tmp_path / "adapter", rows, tmp_path / "merged")
    assert report.max_abs_logit_diff <= 1e-4 and report.top1_agreement == 1.0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    export = write_export(merged, tokenizer, tmp_path / "export", "card")
    reloaded, _, _ = verify_export(export, merged, rows)
    adapter_model = PeftModel.from_pretrained(load_model(cfg), str(tmp_path / "adapter")).eval()
    batch = tokenizer([row_text(tokenizer, r) for r in rows], return_tensors="pt", padding=True,
                      add_special_tokens=False)
    with torch.no_grad():
        assert torch.allclose(adapter_model(**batch).logits, reloaded(**batch).logits, atol=1e-4)
    tied = json.loads((export / "config.json").read_text()).get("tie_word_embeddings", False)
    assert tied == ("lm_head.weight" not in safetensors_keys(export))  # saved once when tied, twice when not
    if tied:
        assert torch.equal(reloaded.get_input_embeddings().weight, reloaded.get_output_embeddings().weight)


# Templates that render an earlier turn differently once later turns follow, as the families' own do: Qwen3 drops the
# <think> block from answers before the last user turn, Mistral v0.3 moves the system prompt into the last user
# turn. Their assistant tokens cannot be located turn by turn, so a multi-turn row is refused with its reason (not
# trained with a wrong mask); single-turn rows train as usual.
MOVING_TEMPLATES = {"qwen3", "mistral"}
PHI3_OWN = ("{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
            "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}")


def test_phi3s_own_template_which_ends_the_text_with_its_eos_stops_at_end(family_checkpoint, tmp_path):
    """The end of turn is <|end|>, the first token after the answer, not the two tokens that close the text."""
    (tmp_path / "phi3.jinja").write_text(PHI3_OWN)
    tokenizer = load_tokenizer(model_cfg(family_checkpoint("phi3"), chat_template=str(tmp_path / "phi3.jinja")))
    assert tokenizer.eos_token == "<|end|>"


@pytest.mark.parametrize("name", list(FAMILIES))
def test_each_familys_template_trains_only_the_answers_each_closed_by_its_end_of_turn(name, family_checkpoint):
    from llm_engineering.data.tokenization import tokenize_rows
    from tests.test_masking_and_packing import trained_text

    family = FAMILIES[name]
    tokenizer = load_tokenizer(model_cfg(family_checkpoint(name)))
    [answer] = trained_text(tokenizer, {"messages": [*CONVERSATION[:2], {"role": "assistant", "content": "Yes."}]})
    assert answer.strip().endswith("Yes." + family.end_of_turn) and "Café" not in answer, answer
    row = {"messages": [*CONVERSATION[:2], {"role": "assistant", "content": "First answer."},
                        {"role": "user", "content": "And on Sunday?"}, {"role": "assistant", "content": "Second answer."}]}
    if name in MOVING_TEMPLATES:
        [refused] = tokenize_rows([row], tokenizer, "assistant", 512, False)
        assert refused.input_ids is None and "renders turn 4 differently once later turns are added" in refused.problem
        return
    spans = trained_text(tokenizer, row)
    assert len(spans) == 2 and all(span.endswith(family.end_of_turn) for span in spans), spans
    assert spans[0].strip().startswith("First answer.") and "Second answer." in spans[1], spans
    assert not any("Sunday" in span or "Café" in span for span in spans)  # the user's turns are not trained
