"""The parts of transformers and TRL below their public APIs this project relies on
(llm_engineering/model/transformers_internals.py, llm_engineering/training/trl_internals.py), each checked as the
project uses it, so a release that changes one fails here, by name. `datasets`: tests/test_datasets_internals.py."""

import torch
from transformers import AttentionInterface, AutoModelForCausalLM

from llm_engineering.model.transformers_internals import attention_in_use, switch_attention
from llm_engineering.training.trl_internals import record_metric


def test_the_decoder_layers_call_the_attention_the_config_names_at_each_forward(tiny_model_dir):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    calls = []
    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]

    def counting(module, query, key, value, attention_mask, **kwargs):
        calls.append(module.layer_idx)
        return sdpa(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("counting_for_test", counting)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager")
    ids = torch.tensor([[1, 2, 3, 4]])
    loaded = attention_in_use(model.config)
    switch_attention(model.config, "counting_for_test")
    with torch.no_grad():
        switched = model(input_ids=ids).logits
    assert calls == [0, 1]  # each layer, once
    switch_attention(model.config, loaded)
    with torch.no_grad():
        back = model(input_ids=ids).logits
    assert calls == [0, 1] and loaded == "eager"
    torch.testing.assert_close(switched, back, atol=1e-5, rtol=1e-4)


def test_a_recorded_metric_is_averaged_into_the_trainers_next_log(tiny_model_dir, tmp_path):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    rows = Dataset.from_dict({"input_ids": [[1, 2, 3]], "labels": [[1, 2, 3]]})
    trainer = SFTTrainer(model=model, train_dataset=rows, args=SFTConfig(
        output_dir=str(tmp_path), report_to=[], use_cpu=True, dataset_kwargs={"skip_prepare_dataset": True}))
    trainer.model.train()
    record_metric(trainer, "probe_accuracy", 0.5, training=True)
    record_metric(trainer, "probe_accuracy", 1.0, training=True)
    record_metric(trainer, "probe_accuracy", 0.0, training=False)  # an evaluation's: not in the training log
    trainer.log({"loss": 1.0})
    assert trainer.state.log_history[-1]["probe_accuracy"] == 0.75
    trainer.model.eval()
    trainer.log({"eval_loss": 1.0})
    assert trainer.state.log_history[-1]["eval_probe_accuracy"] == 0.0


def test_transformers_gguf_reader_still_lists_the_architectures_it_reads_under_the_names_we_map_to():
    from llm_engineering.model.transformers_internals import gguf_causal_architectures, gguf_reader_architecture

    known = gguf_causal_architectures()
    assert {"llama", "qwen2", "qwen3", "gemma2", "gemma3", "mistral", "phi3"} <= set(known)
    assert all(gguf_reader_architecture(name) in known for name in ("qwen2moe", "qwen3moe", "gpt-oss"))
