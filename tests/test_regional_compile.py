"""train.compile: the decoder layers compiled while training train the same adapter, one graph for all of them."""

import pytest
import torch

from llm_engineering.config import AdapterConfig, DataConfig, ModelConfig, QuantizationConfig, TrainConfig


# unquantized without checkpointing as configs/cpu_fastest.yaml trains (this is its run: the training step calls
# train_adapter), and QLoRA with checkpointing
@pytest.mark.parametrize("quantization, gradient_checkpointing", [("none", False), ("4bit", True)])
def test_compiled_layers_train_the_same_adapter_and_evaluation_stays_eager(tiny_model_dir, tmp_path, quantization,
                                                                           gradient_checkpointing):
    from safetensors.torch import load_file
    from torch._dynamo.utils import counters

    from llm_engineering.model.adapter import inject_adapter, save_adapter
    from llm_engineering.model.loading import load_model
    from llm_engineering.training.sft import train_adapter
    from tests.conftest import prepared

    model_cfg = ModelConfig(source="local", name_or_path=str(tiny_model_dir), dtype="float32",
                            quantization=QuantizationConfig(method=quantization, compute_dtype="float32"))
    adapter = AdapterConfig(r=4, alpha=8, dropout=0.0, target_modules="all-linear",
                            gradient_checkpointing=gradient_checkpointing)
    model, _ = inject_adapter(load_model(model_cfg), adapter)
    save_adapter(model, tmp_path / "initial")
    split = prepared(DataConfig(num_rows=24, eval_rows=4), 160)
    trained, losses, graphs = {}, {}, {}
    for compiled in (False, True):
        torch._dynamo.reset()
        counters.clear()
        # an evaluation after every step: without grad it must run the layers eagerly, not compile a second graph
        train = TrainConfig(learning_rate=5e-3, max_steps=3, per_device_batch_size=4, logging_steps=1, eval_steps=1,
                            max_length=160, mixed_precision="no", compile=compiled)
        out = tmp_path / f"compiled-{compiled}"
        result = train_adapter(model_cfg, adapter, train, tmp_path / "initial", split.train, split.eval, out)
        trained[compiled] = load_file(out / "adapter_model.safetensors")
        losses[compiled] = [e["loss"] for e in result.log_history if "loss" in e]
        graphs[compiled] = counters["stats"]["unique_graphs"]
    assert graphs == {False: 0, True: 1}  # rows of different lengths too: dynamic shapes, no recompilation
    assert len(losses[True]) == 3 and losses[True] == pytest.approx(losses[False], rel=1e-4)
    # compiled kernels sum in another order: Adam turns a last-bit gradient difference into up to ~1e-4 of a weight
    # (one element in 512 at 4e-5 on a fresh clone, unquantized); a wrong graph moves every weight by steps of lr
    for name, tensor in trained[False].items():
        torch.testing.assert_close(trained[True][name], tensor, rtol=1e-3, atol=1e-4)


def test_a_model_without_a_layer_list_is_refused_by_name():
    from llm_engineering.training.regional_compile import compiled_decoder_layers

    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    model.config = type("Config", (), {"num_hidden_layers": 2})()
    with pytest.raises(ValueError, match="Sequential: no list of 2 decoder layers"), compiled_decoder_layers(model):
        pass


def test_without_a_cpu_compiler_training_runs_eagerly_with_a_warning(tiny_model_dir, monkeypatch, caplog):
    from torch._inductor import exc

    from llm_engineering.model.adapter import inject_adapter
    from llm_engineering.model.loading import load_model
    from llm_engineering.training.regional_compile import compiled_decoder_layers

    def no_compiler():
        raise exc.InvalidCxxCompiler()

    monkeypatch.setattr("torch._inductor.cpp_builder.get_cpp_compiler", no_compiler)
    model, _ = inject_adapter(load_model(ModelConfig(source="local", name_or_path=str(tiny_model_dir),
                                                     dtype="float32")), AdapterConfig(r=4))
    with caplog.at_level("WARNING"), compiled_decoder_layers(model) as count:
        loss = model(input_ids=torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]])).loss
        loss.backward()
    assert count == 0
    assert "train.compile: torch.compile needs a C++ compiler" in caplog.text


def test_compiled_layers_keep_gradient_checkpointing_memory_saving(tiny_model_dir):
    """With checkpointing, a layer's activations are dropped after its forward and recomputed in the backward. Traced
    into the compiled graph, the checkpoint was lost and the graph saved them all (40 GiB instead of 10 on the 8B GPU
    profile): what autograd holds outside the checkpoints must be what it holds eagerly."""
    from transformers import AutoModelForCausalLM

    from llm_engineering.training.regional_compile import compiled_decoder_layers

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model.train()
    ids = torch.randint(0, model.config.vocab_size, (1, 256))

    def bytes_saved_outside_checkpoints() -> int:
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel() * t.element_size()) or t,
                                                      lambda t: t):
            loss = model(input_ids=ids, use_cache=False).logits.logsumexp(-1).mean()
        loss.backward()
        return sum(saved)

    eager = bytes_saved_outside_checkpoints()
    torch._dynamo.reset()
    with compiled_decoder_layers(model) as compiled:
        assert compiled == model.config.num_hidden_layers - 1
        bytes_saved_outside_checkpoints()  # the first call compiles
        assert bytes_saved_outside_checkpoints() == eager
    # the check has teeth: without checkpointing, the layers' activations (MiBs: hidden 64, 256 tokens) add to the
    # logits' that every variant holds
    model.gradient_checkpointing_disable()
    assert bytes_saved_outside_checkpoints() > eager + 2**20
