"""The registry gate on a real MLflow registry (SQLite): which version holds `champion` after each new version."""

import mlflow
import pytest

from llm_engineering.evaluation import json_valid, rouge_l
from llm_engineering.promotion import current_champion, decide, gate_registered_version


@pytest.fixture()
def registry(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("gate", artifact_location=(tmp_path / "artifacts").as_uri())
    client.create_registered_model("booking")

    def register(**metrics) -> str:
        run = client.create_run(experiment)
        for name, value in metrics.items():
            client.log_metric(run.info.run_id, name, value)
        client.set_terminated(run.info.run_id)
        version = client.create_model_version("booking", f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
        return version.version

    return uri, client, register


def alias_of(client, alias):
    return client.get_model_version_by_alias("booking", alias).version


def test_the_first_version_becomes_champion_and_a_better_one_replaces_it(registry):
    uri, client, register = registry
    first = register(finetuned_exact_match=0.80)
    decision = gate_registered_version("booking", first, "finetuned_exact_match", 0.80, 0.0, tracking_uri=uri)
    assert (decision.promoted, decision.reason, alias_of(client, "champion")) == (True, "no champion yet", first)

    second = register(finetuned_exact_match=0.90)
    decision = gate_registered_version("booking", second, "finetuned_exact_match", 0.90, 0.05, tracking_uri=uri)
    assert decision.promoted and (decision.champion, decision.champion_version) == (0.80, first)
    assert alias_of(client, "champion") == second
    assert client.get_model_version("booking", second).tags["promotion"] == "champion"


def test_a_version_within_the_margin_is_a_challenger_and_the_champion_stays(registry):
    uri, client, register = registry
    champion = register(finetuned_exact_match=0.80)
    gate_registered_version("booking", champion, "finetuned_exact_match", 0.80, 0.0, tracking_uri=uri)
    close = register(finetuned_exact_match=0.82)
    decision = gate_registered_version("booking", close, "finetuned_exact_match", 0.82, 0.05, tracking_uri=uri)
    assert not decision.promoted and decision.alias == "challenger"
    assert "does not beat champion v1 (0.8) by more than 0.05" in decision.reason
    assert (alias_of(client, "champion"), alias_of(client, "challenger")) == (champion, close)


def test_lower_is_better_metrics_promote_a_lower_value(registry):
    uri, client, register = registry
    first = register(eval_loss=1.5)
    gate_registered_version("booking", first, "eval_loss", 1.5, 0.0, higher_is_better=False, tracking_uri=uri)
    worse = register(eval_loss=1.7)
    assert not gate_registered_version("booking", worse, "eval_loss", 1.7, 0.0, False, tracking_uri=uri).promoted
    better = register(eval_loss=1.2)
    assert gate_registered_version("booking", better, "eval_loss", 1.2, 0.0, False, tracking_uri=uri).promoted
    assert alias_of(client, "champion") == better


def test_a_champion_without_the_gate_metric_is_a_clear_error_and_moves_nothing(registry):
    uri, client, register = registry
    old = register(other_metric=1.0)
    client.set_registered_model_alias("booking", "champion", old)
    new = register(finetuned_rouge_l=0.9)
    with pytest.raises(ValueError, match="champion booking v1 has no metric 'finetuned_rouge_l'"):
        gate_registered_version("booking", new, "finetuned_rouge_l", 0.9, 0.0, tracking_uri=uri)
    assert alias_of(client, "champion") == old


def test_equal_scores_do_not_promote():
    assert not decide("m", 0.9, 0.9, 0.0).promoted
    assert decide("m", 0.9, 0.9, 0.0).alias == "challenger"


def test_task_metrics():
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == 1.0
    # LCS "the cat the mat" (4 of 6 and 4 of 5 tokens): F = 2 * (4/6) * (4/5) / (4/6 + 4/5)
    precision, recall = 4 / 6, 4 / 5
    assert rouge_l("the cat was on the mat", "the cat the mat now") == pytest.approx(
        2 * precision * recall / (precision + recall))
    assert rouge_l("", "x") == 0.0 and rouge_l("a b", "c d") == 0.0
    assert json_valid('{"a": 1}', "") and not json_valid("{'a': 1}", "")


def test_a_version_that_lost_the_regression_probes_is_a_challenger_whatever_its_task_score(registry):
    uri, client, register = registry
    champion = register(finetuned_exact_match=0.80)
    gate_registered_version("booking", champion, "finetuned_exact_match", 0.80, 0.0, tracking_uri=uri)
    broken = register(finetuned_exact_match=0.99, regression_drop=0.35)
    decision = gate_registered_version("booking", broken, "finetuned_exact_match", 0.99, 0.0, tracking_uri=uri,
                                       regression_drop=0.35, max_regression=0.10)
    assert (decision.promoted, alias_of(client, "champion"), alias_of(client, "challenger")) == (False, champion,
                                                                                                 broken)
    assert "regression_drop 0.35 exceeds promotion.max_regression 0.1" in decision.reason
    # and the first version of a model is not champion either when it broke the model
    assert not decide("m", 0.99, None, 0.0, regression_drop=0.35, max_regression=0.10).promoted


def test_a_version_evaluated_on_other_eval_data_is_not_compared_with_the_champion(registry):
    uri, client, register = registry
    champion = register(finetuned_exact_match=0.50)
    gate_registered_version("booking", champion, "finetuned_exact_match", 0.5, 0.0, tracking_uri=uri,
                            eval_fingerprint="a" * 64)
    assert client.get_model_version("booking", champion).tags["eval_fingerprint"] == "a" * 64
    other = register(finetuned_exact_match=0.90)
    decision = gate_registered_version("booking", other, "finetuned_exact_match", 0.9, 0.0, tracking_uri=uri,
                                       eval_fingerprint="b" * 64)
    assert not decision.promoted and "evaluated on other eval data" in decision.reason
    same = register(finetuned_exact_match=0.90)
    assert gate_registered_version("booking", same, "finetuned_exact_match", 0.9, 0.0, tracking_uri=uri,
                                   eval_fingerprint="a" * 64).promoted


def test_only_a_missing_model_or_alias_means_no_champion_and_a_registry_that_cannot_be_read_stops(registry,
                                                                                                  monkeypatch):
    uri, client, register = registry
    assert current_champion("never-registered", "m", tracking_uri=uri) is None
    assert current_champion("booking", "m", tracking_uri=uri) is None  # the model exists, no alias yet
    from mlflow.exceptions import MlflowException

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    with pytest.raises(MlflowException):  # nothing listens on port 9: the server is down, not "no champion"
        current_champion("booking", "m", tracking_uri="http://127.0.0.1:9")


def test_a_preference_run_worse_than_the_model_it_started_from_is_never_champion(registry):
    """A DPO run registered under its own name has no champion to beat: the model it started from is the bar."""
    uri, client, register = registry
    worse = register(finetuned_json_exact_match=0.825, start_json_exact_match=0.9)
    decision = gate_registered_version("booking", worse, "finetuned_json_exact_match", 0.825, 0.0, tracking_uri=uri,
                                       start=0.9)
    assert (decision.promoted, decision.alias, alias_of(client, "challenger")) == (False, "challenger", worse)
    assert decision.reason.startswith("finetuned_json_exact_match 0.825 is worse than the 0.9 of the model this run "
                                      "started from")
    with pytest.raises(mlflow.exceptions.MlflowException):  # no champion was made
        alias_of(client, "champion")

    kept = register(finetuned_json_exact_match=0.9, start_json_exact_match=0.9)
    decision = gate_registered_version("booking", kept, "finetuned_json_exact_match", 0.9, 0.0, tracking_uri=uri,
                                       start=0.9)
    assert (decision.promoted, alias_of(client, "champion")) == (True, kept)
    assert (decision.reason, decision.start) == ("no champion yet; the start model scored 0.9", 0.9)
    # lower-is-better metrics compare the other way
    assert not decide("finetuned_perplexity", 3.1, None, 0.0, higher_is_better=False, start=3.0).promoted
    assert decide("finetuned_perplexity", 2.9, None, 0.0, higher_is_better=False, start=3.0).promoted
