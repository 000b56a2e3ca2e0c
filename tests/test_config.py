from pathlib import Path

import pytest

from llm_engineering.config import ConfigError, RunConfig, flatten, load_run_config, load_run_config_file

STEP_NAMES = {"load_dataset", "load_base_model", "inject_adapter", "train_sft", "merge_adapter", "evaluate_base",
              "evaluate_finetuned", "export_model"}
CONFIGS = sorted(Path(__file__).parents[1].joinpath("configs").glob("*.yaml"))


def test_defaults_follow_fastchat_lora_arguments():
    cfg = load_run_config({})
    assert (cfg.adapter.r, cfg.adapter.alpha, cfg.adapter.dropout) == (8, 16, 0.05)
    assert cfg.adapter.target_modules == ["q_proj", "v_proj"] and cfg.adapter.bias == "none"
    assert cfg.model.trust_remote_code is False


def test_unknown_key_is_named_with_its_path():
    with pytest.raises(ConfigError) as err:
        load_run_config({"adapter": {"rank": 8}})
    assert "adapter.rank: unknown key" in str(err.value)


def test_out_of_range_values_name_path_value_and_rule():
    with pytest.raises(ConfigError) as err:
        load_run_config({"adapter": {"r": 0, "dropout": 1.5}, "train": {"max_length": -1}})
    message = str(err.value)
    assert "3 problems" in message
    assert "adapter.r = 0: Input should be greater than 0" in message
    assert "adapter.dropout = 1.5: Input should be less than 1" in message
    assert "train.max_length = -1" in message


def test_wrong_choice_lists_the_allowed_values():
    with pytest.raises(ConfigError) as err:
        load_run_config({"model": {"quantization": {"method": "3bit"}}})
    assert "model.quantization.method = '3bit'" in str(err.value) and "'4bit'" in str(err.value)


def test_source_needs_its_location():
    with pytest.raises(ConfigError, match="source 'file' needs data.path"):
        load_run_config({"data": {"source": "file"}})


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_validates(path):
    assert isinstance(load_run_config_file(path), RunConfig)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_is_a_valid_zenml_run_config(path):
    import yaml
    from zenml.config.pipeline_run_configuration import PipelineRunConfiguration

    run_config = PipelineRunConfiguration.model_validate(yaml.safe_load(path.read_text()))
    for name in run_config.steps or {}:
        assert name in STEP_NAMES, f"{path.name}: steps.{name} is not a step of the pipeline"


def test_gpu_config_retries_the_gpu_steps_and_checkpoints():
    import yaml

    document = yaml.safe_load(Path(CONFIGS[0]).with_name("gpu_hub_model.yaml").read_text())
    assert document["steps"]["train_sft"]["retry"]["max_retries"] >= 1
    assert document["parameters"]["config"]["train"]["checkpoint_steps"] > 0


def test_shipped_configs_reproduce_the_seeds():
    by_name = {p.stem: load_run_config_file(p) for p in CONFIGS}
    fastchat = by_name["fastchat_lora"].adapter
    assert (fastchat.r, fastchat.alpha, fastchat.dropout, fastchat.target_modules) == (8, 16, 0.05, ["q_proj", "v_proj"])
    assert by_name["fastchat_lora"].model.quantization.quant_type == "nf4"
    handbook = by_name["llm_engineers_handbook"].adapter
    assert (handbook.r, handbook.alpha, handbook.dropout) == (32, 32, 0.0)
    assert sorted(handbook.target_modules) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_run_config_file(tmp_path / "nope.yaml")


def test_flatten_gives_dotted_keys():
    flat = flatten(load_run_config({}))
    assert flat["adapter.r"] == 8 and flat["model.quantization.method"] == "none"
