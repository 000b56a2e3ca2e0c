"""DPO and ORPO of the LoRA adapter on the tiny model, through the one preference-training entry point: the reward
accuracy on held-out pairs rises, DPO's reference is the adapter it started from (not the base model, and no second
model), and what is saved is one plain adapter."""

import json

import pytest
import torch
from safetensors.torch import load_file

from llm_engineering.config import AdapterConfig, DataConfig, PreferenceConfig, TrainConfig
from llm_engineering.data.preference import PREFERENCE_ROWS
from llm_engineering.data.prepare import prepare
from llm_engineering.model.adapter import inject_adapter, save_adapter
from llm_engineering.model.loading import load_model, load_tokenizer
from llm_engineering.training.preference import train_preference

ADAPTER = AdapterConfig(r=8, alpha=16, dropout=0.0, target_modules="all-linear")


@pytest.fixture(scope="module")
def booking_pairs(tiny_model_dir, tmp_path_factory):
    """Booking pairs with format mistakes only: a 2-layer random model learns those in a dozen steps (copying mistakes,
    half of the built-in task's, need a pretrained model: the embedded one in configs/dpo.yaml).
    The held-out accuracy over 16 pairs depends on the seed: with today's generator, 12 steps give DPO 0.875/0.875/0.75
    and ORPO 0.81/0.69/0.75 at seeds 0/42/1 (deterministic on CPU); a changed generator may need another seed."""
    from llm_engineering.config import ModelConfig
    from llm_engineering.data.synthetic import booking_preference_rows

    pairs = tmp_path_factory.mktemp("pairs") / "booking_pairs.jsonl"
    pairs.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n"
                             for row in booking_preference_rows(64, seed=0, copying_share=0.0)))
    tokenizer = load_tokenizer(ModelConfig(source="local", name_or_path=str(tiny_model_dir)))
    return prepare(DataConfig(source="file", path=str(pairs), eval_rows=16), tokenizer, 160, kind=PREFERENCE_ROWS)


def start_adapter(model_cfg, directory, perturb: bool = False):
    """A fresh adapter (B = 0: the model is the base), or one that already changes the model (as an SFT adapter)."""
    model, _ = inject_adapter(load_model(model_cfg), ADAPTER)
    if perturb:
        torch.manual_seed(0)
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.data.normal_(0, 0.05)
    return save_adapter(model, directory)


def train(model_cfg, tmp_path, data, pref, initial, **train):
    settings = dict(learning_rate=5e-3, max_steps=12, per_device_batch_size=4, logging_steps=1, eval_steps=12,
                    max_length=160, mixed_precision="no", lr_scheduler="constant")
    return train_preference(model_cfg, ADAPTER, TrainConfig(**(settings | train)), pref, initial, data.train,
                            data.eval, tmp_path / f"{pref.method}-adapter")


def test_dpo_learns_to_prefer_the_exact_record_on_held_out_pairs(tiny_model_cfg, booking_pairs, tmp_path):
    result = train(tiny_model_cfg, tmp_path, booking_pairs, PreferenceConfig(method="dpo", beta=0.1),
                   start_adapter(tiny_model_cfg, tmp_path / "fresh"))
    metrics = result.metrics()
    print(json.dumps(metrics, indent=1))
    assert metrics["pref_steps"] == 12
    assert metrics["pref_eval_reward_accuracies"] >= 0.75  # 16 held-out pairs; chance is 0.5
    assert metrics["pref_eval_reward_margins"] > 0
    assert metrics["pref_train_loss_final"] < metrics["pref_train_loss_first"]
    curves = [entry for entry in result.log_history if "rewards/accuracies" in entry]
    assert len(curves) == 12  # one point per logging step, for the MLflow curves
    saved = load_file(tmp_path / "dpo-adapter" / "adapter_model.safetensors")
    assert saved and not any(".ref." in key for key in saved)  # the frozen reference copy is not part of the result


def test_dpo_measures_rewards_against_the_adapter_it_started_from(tiny_model_cfg, booking_pairs, tmp_path):
    initial = start_adapter(tiny_model_cfg, tmp_path / "sft-like", perturb=True)
    result = train(tiny_model_cfg, tmp_path, booking_pairs, PreferenceConfig(method="dpo"), initial, max_steps=2)
    first = next(entry for entry in result.log_history if "rewards/chosen" in entry)
    # before the first update the policy is the reference: both rewards are zero. Had the reference been the base
    # model, the perturbed adapter would already score differently from it.
    assert first["rewards/chosen"] == pytest.approx(0.0, abs=1e-6)
    assert first["rewards/rejected"] == pytest.approx(0.0, abs=1e-6)


def test_orpo_from_scratch_raises_the_reward_accuracy_and_saves_a_plain_adapter(tiny_model_cfg, booking_pairs,
                                                                                tmp_path):
    result = train(tiny_model_cfg, tmp_path, booking_pairs, PreferenceConfig(method="orpo", beta=0.5),
                   start_adapter(tiny_model_cfg, tmp_path / "fresh"))
    metrics = result.metrics()
    print(json.dumps(metrics, indent=1))
    assert metrics["pref_eval_reward_accuracies"] >= 0.75
    config = json.loads((tmp_path / "orpo-adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8


def test_the_sft_loss_weight_adds_trls_sft_loss_to_dpos(tiny_model_cfg, tmp_path):
    from llm_engineering.training.preference import trainer_arguments

    def args(pref):
        return trainer_arguments(pref, TrainConfig(mixed_precision="no"), ADAPTER, tiny_model_cfg, str(tmp_path))

    plain = args(PreferenceConfig(method="dpo"))
    assert plain.loss_type == ["sigmoid"] and plain.loss_weights == [1.0]
    rpo = args(PreferenceConfig(method="dpo", loss_type="ipo", sft_loss_weight=0.5))
    assert rpo.loss_type == ["ipo", "sft"] and rpo.loss_weights == [1.0, 0.5]
    with pytest.raises(ValueError, match="sft_loss_weight are DPO settings"):
        PreferenceConfig(method="orpo", sft_loss_weight=1.0)
