"""GRPO of the LoRA adapter on the tiny model, through the preference-training entry point: the rewards see each
sampled completion beside its row's reference answer, their curves reach the log history, the KL is measured against
the adapter the run started from, what is saved is one plain adapter; and a reward that cannot be used, or returns
something that is not one number per completion, stops the run naming it."""

import json
import math

import pytest
from safetensors.torch import load_file

from llm_engineering.config import ConfigError, PreferenceConfig, RewardConfig, load_run_config
from llm_engineering.scoring import json_fields
from llm_engineering.training.rewards import RewardError, check_rewards, completion_text
from tests.test_preference_training import booking_pairs, start_adapter, train  # noqa: F401  (the fixture too)

SEEN: list[dict] = []  # what `recording` was called with, for the test that reads it


def recording(prompts, completions, reference, **kwargs):
    """A user's reward (module:function): records its arguments, scores by the share of the reference's characters."""
    SEEN.append({"prompts": prompts, "completions": completions, "reference": reference, "keys": sorted(kwargs)})
    return [len(set(completion_text(c)) & set(r)) / len(set(r)) for c, r in zip(completions, reference)]


def one_short(prompts, completions, **kwargs):
    return [0.0] * (len(completions) - 1)


def not_a_number(prompts, completions, **kwargs):
    return [math.nan] * len(completions)


def no_keywords(completions):
    return [0.0] * len(completions)


def grpo(*functions: str, **settings) -> PreferenceConfig:
    return PreferenceConfig(method="grpo", rewards=[RewardConfig(function=f) for f in functions],
                            num_generations=4, max_completion_length=12, **settings)


def test_grpo_scores_sampled_completions_against_each_rows_reference_and_logs_every_reward(
        tiny_model_cfg, booking_pairs, tmp_path):  # noqa: F811
    SEEN.clear()
    initial = start_adapter(tiny_model_cfg, tmp_path / "sft-like", perturb=True)
    result = train(tiny_model_cfg, tmp_path, booking_pairs,
                   grpo("json_fields", "tests.test_grpo:recording", "stops", beta=0.1), initial,
                   max_steps=3, per_device_batch_size=8, learning_rate=1e-3)
    assert result.steps == 3 and len(SEEN) == 3
    references = {json.dumps(row["chosen"][-1]["content"]) for row in booking_pairs.train.to_list()}
    for call in SEEN:  # 2 prompts x 4 completions a step, each beside its own pair's chosen answer
        assert len(call["completions"]) == 8 and len(call["reference"]) == 8
        assert {json.dumps(r) for r in call["reference"]} <= references
        assert call["reference"][:4] == [call["reference"][0]] * 4  # one group: one prompt, one reference
        assert call["prompts"][0][-1]["role"] == "user" and "completion_ids" in call["keys"]
    curves = [entry for entry in result.log_history if "reward" in entry]
    assert len(curves) == 3
    for name in ("json_fields", "tests.test_grpo.recording", "stops"):
        assert all(f"rewards/{name}/mean" in entry for entry in curves)
    # before the first update the policy is the start adapter: TRL's reference is its frozen copy, not the base model
    assert curves[0]["kl"] == pytest.approx(0.0, abs=1e-6)
    metrics = result.metrics()
    assert metrics["pref_reward_first"] == pytest.approx(curves[0]["reward"])
    # the table of sampled completions: two groups a logging step, each reward's value and the weighted total
    assert [row["step"] for row in result.samples] == [step for step in range(3) for _ in range(8)]
    row = result.samples[-1]
    assert json.dumps(row["reference"]) in references and row["prompt"] == SEEN[-1]["prompts"][7][-1]["content"]
    assert row["completion"] == completion_text(SEEN[-1]["completions"][7])
    assert row["total"] == pytest.approx(row["json_fields"] + row["tests.test_grpo.recording"] + row["stops"])
    saved = load_file(tmp_path / "grpo-adapter" / "adapter_model.safetensors")
    assert saved and not any(".ref." in key for key in saved)


@pytest.mark.parametrize("function, message", [
    ("tests.test_grpo:one_short", "'tests.test_grpo:one_short' returned 7 for 8 completions"),
    ("tests.test_grpo:not_a_number", "'tests.test_grpo:not_a_number' returned nan for the completion of row 0"),
])
def test_a_reward_that_returns_no_number_per_completion_stops_the_run_naming_it(
        function, message, tiny_model_cfg, booking_pairs, tmp_path):  # noqa: F811
    with pytest.raises(RewardError, match=message):
        train(tiny_model_cfg, tmp_path, booking_pairs, grpo(function), start_adapter(tiny_model_cfg, tmp_path / "a"),
              max_steps=1, per_device_batch_size=8)


@pytest.mark.parametrize("function, message", [
    ("tests.test_grpo:missing", "'tests.test_grpo:missing' cannot be imported"),
    ("no_such_module:reward", "'no_such_module:reward' cannot be imported"),
    ("tests.test_grpo:no_keywords", "must take TRL's keywords: f\\(prompts, completions, \\*\\*kwargs\\)"),
    ("json_exact", "'json_exact': not a built-in"),
])
def test_a_reward_that_cannot_be_used_is_refused_before_anything_runs(function, message):
    with pytest.raises(RewardError, match=message):
        check_rewards(grpo(function))


def test_grpo_settings_are_checked_with_the_config():
    with pytest.raises(ValueError, match="grpo needs at least one reward"):
        PreferenceConfig(method="grpo")
    with pytest.raises(ValueError, match="rewards are GRPO settings"):
        PreferenceConfig(method="dpo", rewards=[RewardConfig(function="json_valid")])
    with pytest.raises(ConfigError, match="must be whole groups of preference.num_generations"):
        load_run_config({"preference": {"method": "grpo", "rewards": [{"function": "json_valid"}],
                                        "num_generations": 3}, "train": {"per_device_batch_size": 4}})


def test_the_partial_credit_reward_counts_fields_right_and_keys_invented():
    reference = '{"name": "Ana", "party_size": 2, "time": "19:00"}'
    assert json_fields(reference, reference) == 1.0
    assert json_fields('{"name": "Anna", "party_size": 2, "time": "19:00"}', reference) == pytest.approx(2 / 3)
    assert json_fields('{"name": "Ana", "party_size": 2, "time": "19:00", "age": 3}', reference) == 0.75
    assert json_fields("Ana, 2, 19:00", reference) == 0.0
