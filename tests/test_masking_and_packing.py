"""Templates, loss masks and packing: which tokens are trained, and that packed rows do not see each other."""

import pytest
from pathlib import Path
import torch

from llm_engineering.config import ModelConfig
from llm_engineering.data.collate import PackedCollator, block_diagonal_attention
from llm_engineering.data.formats import RowProblem
from llm_engineering.data.stats import padding_fraction
from llm_engineering.data.templates import BUILT_IN
from llm_engineering.data.tokenization import IGNORE, pieces, tokenize_rows
from llm_engineering.model.loading import ModelLoadError, load_tokenizer

MULTI_TURN = {"messages": [
    {"role": "system", "content": "Be terse."},
    {"role": "user", "content": "First question?"},
    {"role": "assistant", "content": "First answer."},
    {"role": "user", "content": "Second question?"},
    {"role": "assistant", "content": "Second answer."},
]}


def trained_text(tokenizer, row, loss_on="assistant") -> list[str]:
    """The trained spans of a tokenized row, decoded: consecutive trained tokens joined, spans separated."""
    result = tokenize_rows([row], tokenizer, loss_on, 512, False)[0]
    spans, current = [], []
    for token, label in zip(result.input_ids, result.labels):
        if label != IGNORE:
            assert label == token
            current.append(token)
        elif current:
            spans.append(tokenizer.decode(current))
            current = []
    return spans + ([tokenizer.decode(current)] if current else [])


def test_multi_turn_trains_exactly_every_assistant_turn_with_its_end_of_turn_token(tokenizer):
    # SmolLM2's ChatML template has no {% generation %} markers
    assert "{% generation %}" not in tokenizer.chat_template
    assert trained_text(tokenizer, MULTI_TURN) == ["First answer.<|im_end|>", "Second answer.<|im_end|>"]


def test_loss_on_all_trains_the_whole_conversation(tokenizer):
    result = tokenize_rows([MULTI_TURN], tokenizer, "all", 512, False)[0]
    assert result.labels == result.input_ids
    assert tokenizer.decode(result.input_ids) == tokenizer.apply_chat_template(MULTI_TURN["messages"],
                                                                               tokenize=False).rstrip()


def test_the_trained_tokens_are_those_the_model_generates_after_the_prompt(tokenizer):
    """Masked pieces are tokenized as inference sees them: prompt with generation prompt, then the reply."""
    row = {"messages": MULTI_TURN["messages"][:3]}
    result = tokenize_rows([row], tokenizer, "assistant", 512, False)[0]
    prompt = tokenizer.apply_chat_template(row["messages"][:2], tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert result.input_ids[: len(prompt_ids)] == prompt_ids
    assert all(label == IGNORE for label in result.labels[: len(prompt_ids)])
    assert all(label != IGNORE for label in result.labels[len(prompt_ids):])


@pytest.mark.parametrize("name, trained", [
    ("chatml", ["First answer.<|im_end|>", "Second answer.<|im_end|>"]),
    ("alpaca", ["First answer.<|im_end|>", "Second answer.<|im_end|>"]),  # alpaca closes a reply with eos_token
])
def test_built_in_templates_render_and_mask(tiny_model_dir, name, trained):
    tokenizer = load_tokenizer(ModelConfig(source="local", name_or_path=str(tiny_model_dir), chat_template=name))
    assert tokenizer.chat_template == BUILT_IN[name]
    assert trained_text(tokenizer, MULTI_TURN) == trained


def test_a_jinja_file_template_is_used_and_its_end_token_becomes_eos(tiny_model_dir, tmp_path):
    template = tmp_path / "plain.jinja"
    template.write_text("{% for m in messages %}{{ m['role'] + ': ' + m['content'] }}"
                        "{% if m['role'] == 'assistant' %}{{ '<|endoftext|>' }}{% endif %}{{ '\\n' }}{% endfor %}"
                        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")
    tokenizer = load_tokenizer(ModelConfig(source="local", name_or_path=str(tiny_model_dir),
                                           chat_template=str(template)))
    assert tokenizer.eos_token == "<|endoftext|>"  # generation now stops where the template ends a reply
    assert trained_text(tokenizer, MULTI_TURN) == ["First answer.<|endoftext|>", "Second answer.<|endoftext|>"]


def test_a_template_whose_turn_end_is_not_a_token_is_refused(tiny_model_dir):
    # Llama-3's <|eot_id|> is not in SmolLM2's vocabulary: the model could never learn to stop
    with pytest.raises(ModelLoadError, match=r"closes an assistant turn with '<\|eot_id\|>' \(\d+ tokens\)"):
        load_tokenizer(ModelConfig(source="local", name_or_path=str(tiny_model_dir), chat_template="llama-3"))
    with pytest.raises(ModelLoadError, match="neither a built-in template"):
        load_tokenizer(ModelConfig(source="local", name_or_path=str(tiny_model_dir), chat_template="vicuna"))


def test_a_template_that_cannot_render_a_row_is_reported_for_that_row(tiny_model_dir):
    tokenizer = load_tokenizer(ModelConfig(source="local", name_or_path=str(tiny_model_dir), chat_template="mistral"))
    with pytest.raises(RowProblem, match="the chat template cannot render this row: .*no system role"):
        pieces(MULTI_TURN, tokenizer, "assistant")
    no_system = {"messages": MULTI_TURN["messages"][1:]}
    assert trained_text(tokenizer, no_system) == ["First answer.<|im_end|>", "Second answer.<|im_end|>"]


def packed_and_alone_losses(model, rows, tokenizer, masked=True):
    """Per-token losses of each row packed into one sequence, and of each row alone."""
    collator = PackedCollator(pad_token_id=tokenizer.pad_token_id)
    packed = {"input_ids": sum((r["input_ids"] for r in rows), []), "labels": sum((r["labels"] for r in rows), []),
              "seq_lengths": [len(r["input_ids"]) for r in rows]}

    def losses(batch):
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
        with torch.no_grad(), (block_diagonal_attention(model) if masked else torch.no_grad()):
            logits = model(**inputs).logits[:, :-1]
        return torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch["labels"][:, 1:], reduction="none")

    together = losses(collator([packed]))[0]
    alone = [losses(collator([r]))[0] for r in rows]
    return together, alone


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_rows_loss_is_the_same_alone_and_packed_with_others(tiny_model_dir, tokenizer, attention):
    from transformers import AutoModelForCausalLM

    from tests.conftest import prepared
    from llm_engineering.config import DataConfig

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation=attention)
    rows = prepared(DataConfig(num_rows=12, eval_rows=2)).train.to_list()[:4]
    together, alone = packed_and_alone_losses(model, rows, tokenizer)
    start = 0
    for row, row_losses in zip(rows, alone):
        trained = torch.tensor(row["labels"][1:]) != IGNORE
        packed_part = together[start : start + len(row["input_ids"]) - 1]
        assert torch.allclose(packed_part[trained], row_losses[trained], atol=1e-5)
        start += len(row["input_ids"])
    # the check has teeth: without the block mask, later rows attend to earlier ones and their losses change
    unmasked, _ = packed_and_alone_losses(model, rows, tokenizer, masked=False)
    assert (unmasked - together).abs().max() > 1e-3


def test_packing_removes_padding_from_rows_of_mixed_lengths():
    lengths = [20, 200, 35, 180, 60, 150, 90, 240] * 8
    assert padding_fraction(lengths, batch_size=4) > 0.3
    # best-fit packing into 256-token sequences leaves only the tail of each sequence unused
    from datasets import Dataset
    from trl import pack_dataset

    packed = pack_dataset(Dataset.from_dict({"input_ids": [[1] * n for n in lengths]}), 256, strategy="bfd")
    packed_lengths = [len(ids) for ids in packed["input_ids"]]
    assert sum(packed_lengths) == sum(lengths)
    assert padding_fraction(packed_lengths, batch_size=4) < 0.15


@pytest.mark.parametrize("name", ["tokenizer", "chatml", "alpaca", "mistral"])
def test_the_fast_renderer_matches_apply_chat_template(tiny_model_dir, name):
    from llm_engineering.data.templates import fast_renderer

    tokenizer = load_tokenizer(ModelConfig(source="local", name_or_path=str(tiny_model_dir), chat_template=name))
    messages = MULTI_TURN["messages"][1:]  # mistral has no system role
    render = fast_renderer(tokenizer)
    for end in range(1, len(messages) + 1):
        for generation_prompt in (False, True):
            assert render(messages[:end], generation_prompt) == tokenizer.apply_chat_template(
                messages[:end], tokenize=False, add_generation_prompt=generation_prompt)


def packed_in_pairs(rows: list[dict]) -> list[dict]:
    """Rows packed two per sequence, as TRL's pack_dataset hands them to the collator."""
    return [{"input_ids": sum((r["input_ids"] for r in pair), []), "labels": sum((r["labels"] for r in pair), []),
             "seq_lengths": [len(r["input_ids"]) for r in pair]} for pair in zip(rows[::2], rows[1::2])]


def _cpu_has_avx512() -> bool:
    try:
        return "avx512f" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return True


# Measured (torch 2.13 CPU): on one 2-core AMD EPYC without AVX-512, PyTorch's CPU flex kernel got one position of the
# second packed document wrong (position 1, |Δlogit| 0.34; every other position within 2e-7); on another AVX2-only
# EPYC the same test passed (2026-12-07), as it does on every AVX-512 machine so far. So the defect is in the kernel on
# some CPUs without AVX-512, not on all of them: expected to fail only there, and a pass there is no error. Flex
# attention trains on CUDA only (refused on CPU), so this CPU forward check cannot gate there.
@pytest.mark.xfail(not _cpu_has_avx512(), reason="torch's CPU flex attention kernel got one position wrong on some "
                   "CPUs without AVX-512 (not on all of them)", strict=False)
def test_flex_attention_packing_flattens_a_batch_to_one_fixed_length_sequence_of_independent_rows(
        tiny_model_dir, tokenizer):
    """The varlen path for flex attention (CUDA training): TRL's padding-free batch, padded to one length so the
    kernel compiles once, and transformers' document mask from the restarting position ids. Checked here with
    forwards only: PyTorch's flex attention has no CPU backward."""
    from transformers import AutoModelForCausalLM

    from tests.conftest import prepared
    from llm_engineering.config import DataConfig, TrainConfig
    from llm_engineering.training.context import packed_collator

    cfg = TrainConfig(packing=True, max_length=256, per_device_batch_size=2)
    collator = packed_collator(tokenizer, cfg, ModelConfig(attn_implementation="flex_attention"))
    rows = prepared(DataConfig(num_rows=12, eval_rows=2)).train.to_list()[:4]
    sequences = packed_in_pairs(rows)
    batch = collator(sequences)
    total = sum(len(r["input_ids"]) for r in rows)
    assert batch["input_ids"].shape == (1, 512) and set(batch) == {"input_ids", "labels", "position_ids"}
    assert (batch["labels"][0, total:] == IGNORE).all()  # the pads train nothing

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32,
                                                 attn_implementation="flex_attention").eval()
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        start = 0
        for row in rows:
            n = len(row["input_ids"])
            alone = model(input_ids=torch.tensor([row["input_ids"]]), use_cache=False).logits[0]
            assert torch.allclose(packed[start:start + n], alone, atol=1e-4)
            start += n
        # the check has teeth: one causal sequence (no document mask) changes every row after the first
        causal = model(input_ids=batch["input_ids"], use_cache=False).logits[0]
    first = len(rows[0]["input_ids"])
    assert (causal[first:total] - packed[first:total]).abs().max() > 1e-3


@pytest.mark.parametrize("lm_head_loss", ["trained_positions", "trl_fused"])  # our two trainer classes
def test_padding_free_batches_count_every_real_token_as_trained_input(tiny_model_dir, tokenizer, tmp_path,
                                                                     lm_head_loss):
    """tokens/s (MLflow, the benchmark) counts non-padding tokens. A padding-free batch (flex or flash attention's
    packing) has no attention mask, and transformers would count the tokens unequal to the pad id: here pad is
    <|im_end|>, which ends every turn, so every row would lose tokens. Our trainer counts the rows' tokens."""
    from transformers import AutoModelForCausalLM

    from tests.conftest import prepared
    from llm_engineering.config import AdapterConfig, DataConfig, TrainConfig
    from llm_engineering.training.sft import build_trainer

    model_cfg = ModelConfig(attn_implementation="flex_attention")
    cfg = TrainConfig(packing=True, max_length=256, per_device_batch_size=2, lm_head_loss=lm_head_loss)
    rows = prepared(DataConfig(num_rows=12, eval_rows=2)).train.to_list()[:4]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    trainer = build_trainer(model, tokenizer, model_cfg, AdapterConfig(), cfg, rows, rows[:1], tmp_path)
    sequences = packed_in_pairs(rows)
    batch = trainer.data_collator(sequences)
    assert "attention_mask" not in batch and batch["input_ids"].numel() == 512  # padding-free, padded to one length
    total = sum(len(r["input_ids"]) for r in rows)
    assert int((batch["input_ids"] != tokenizer.pad_token_id).sum()) < total  # what the pad id alone would count

    trainer._track_num_input_tokens(batch)
    assert trainer.state.num_input_tokens_seen == total
    # a batch with a mask (sdpa's packing) is still counted by its mask
    masked = PackedCollator(pad_token_id=tokenizer.pad_token_id)(sequences)
    trainer._track_num_input_tokens(masked)
    assert trainer.state.num_input_tokens_seen == 2 * total


def test_flex_attention_training_without_cuda_is_refused_before_loading(tiny_model_dir, tmp_path):
    from llm_engineering.config import AdapterConfig, TrainConfig
    from llm_engineering.model.loading import load_base
    from llm_engineering.training.sft import train_adapter

    cfg = ModelConfig(source="local", name_or_path=str(tiny_model_dir), attn_implementation="flex_attention")
    with pytest.raises(ModelLoadError, match="flex_attention trains only on CUDA"):
        load_base(cfg)
    with pytest.raises(ModelLoadError, match="flex_attention trains only on CUDA"):
        train_adapter(cfg, AdapterConfig(), TrainConfig(), tmp_path / "no-adapter", [], [], tmp_path / "out")


def test_flex_attention_is_on_for_training_forwards_only(tiny_model_dir):
    from llm_engineering.model.loading import load_model
    from llm_engineering.training.context import flex_attention_while_training

    model = load_model(ModelConfig(source="local", name_or_path=str(tiny_model_dir),
                                   attn_implementation="flex_attention"), quantize=False)
    assert model.config._attn_implementation == "sdpa"  # as loaded for evaluation, generation and merging
    seen = []

    class Recorded(Exception):  # stops a training forward before flex's CPU kernel, which has no backward
        pass

    def record(module, _args):
        seen.append(module.config._attn_implementation)
        if torch.is_grad_enabled():
            raise Recorded

    model.model.layers[0].self_attn.register_forward_pre_hook(record)
    ids = torch.tensor([[1, 2, 3]])
    with flex_attention_while_training(model):
        model.train()
        with pytest.raises(Recorded):
            model(input_ids=ids, use_cache=False)
        with torch.no_grad():  # a mid-training evaluation
            model(input_ids=ids, use_cache=False)
            model.eval()
            model(input_ids=ids, use_cache=False)
    assert seen == ["flex_attention", "sdpa", "sdpa"]
    assert model.config._attn_implementation == "sdpa"
