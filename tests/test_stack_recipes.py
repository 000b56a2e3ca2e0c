"""Cloud stack recipes, up to the boundary of the clouds: each recipe's step operator, step settings, artifact store
and tracker configs pass ZenML's own flavor classes, credentials are secret references only, and mistakes are named."""

import copy

import pytest
import yaml

from llm_engineering.orchestration import recipes

NAMES = ["kubernetes", "sagemaker", "vertex", "modal", "ssh"]


@pytest.mark.parametrize("name", NAMES)
def test_each_recipe_validates_and_sends_the_gpu_steps_to_its_operator(name, capsys):
    recipe = recipes.load_recipe(name)
    assert recipes.main([name]) == 0
    printed = capsys.readouterr().out
    assert f"zenml step-operator register {name}_gpu --flavor={recipe['step_operator']['flavor']}" in printed
    overlay = yaml.safe_load(printed.split("# add to your run config:\n", 1)[1])
    assert set(overlay["steps"]) == {"train_sft", "merge_adapter"}
    assert all(step["step_operator"] == f"{name}_gpu" and step["settings"]["resources"]["gpu_count"] == 1
               for step in overlay["steps"].values())
    assert overlay["settings"]["docker"]["dockerfile"] == "docker/Dockerfile"


def recipe_with(monkeypatch, tmp_path, base: str, edit) -> str:
    recipe = copy.deepcopy(yaml.safe_load((recipes.RECIPES / f"{base}.yaml").read_text()))
    edit(recipe)
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(recipe))
    monkeypatch.setattr(recipes, "RECIPES", tmp_path)
    return "broken"


def test_a_typo_in_the_step_settings_is_named(monkeypatch, tmp_path):
    name = recipe_with(monkeypatch, tmp_path, "vertex", lambda r: r["step_settings"].update(acelerator_count=1))
    with pytest.raises(ValueError, match=r"broken.yaml step_settings: unknown key\(s\) \['acelerator_count'\]"):
        recipes.load_recipe(name)


def test_a_literal_credential_is_refused(monkeypatch, tmp_path):
    name = recipe_with(monkeypatch, tmp_path, "modal", lambda r: r["step_operator"]["config"].update(token_id="ak-1"))
    with pytest.raises(ValueError, match="token_id is a credential: give a ZenML secret reference"):
        recipes.load_recipe(name)


def test_a_wrong_value_type_and_an_unknown_recipe_are_named(monkeypatch, tmp_path):
    name = recipe_with(monkeypatch, tmp_path, "vertex", lambda r: r["step_settings"].update(accelerator_count="two"))
    with pytest.raises(ValueError, match="accelerator_count"):
        recipes.load_recipe(name)
    with pytest.raises(ValueError, match="no stack recipe 'azure'; there are: broken"):
        recipes.load_recipe("azure")
