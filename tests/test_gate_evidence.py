"""The gate decides on evidence: 95 % intervals over per-item scores, paired where two models answered the same
items, and "cannot tell" (with the items that would tell) instead of a decision on one flipped item."""

import json
import random

import pytest

from llm_engineering.intervals import mean_interval, paired_difference, wilson
from llm_engineering.promotion import Champion, Evidence, current_champion, decide
from tests.test_promotion import registry  # noqa: F401  (the fixture: a real MLflow registry)

METRIC = "finetuned_json_exact_match"


def test_wilson_matches_the_textbook_values_and_stays_inside_0_1():
    # 85 of 100: the textbook Wilson interval is [0.767, 0.907]; 0 of 40 and 40 of 40 keep a width, not a point
    interval = wilson(85, 100)
    assert (round(interval.low, 3), round(interval.high, 3)) == (0.767, 0.907)
    assert wilson(0, 40).low == 0.0 and 0.08 < wilson(0, 40).high < 0.09
    assert wilson(40, 40).high == 1.0 and 0.91 < wilson(40, 40).low < 0.92
    # one item of 100 moves the rate by 0.01 (the bar), of 40 by 0.025
    assert wilson(86, 100).estimate - interval.estimate == pytest.approx(0.01)


def test_a_paired_difference_is_tighter_than_the_rates_and_the_same_every_time():
    rng = random.Random(0)
    base = [float(rng.random() < 0.8) for _ in range(100)]
    tuned = [b if rng.random() < 0.95 else 1.0 - b for b in base]  # the same items, a few flipped
    paired = paired_difference(tuned, base)
    separate = wilson(sum(tuned), 100)
    assert paired.high - paired.low < (separate.high - separate.low) / 2
    assert paired == paired_difference(tuned, base)  # seeded: the same scores give the same interval
    with pytest.raises(ValueError, match="same items: 3 vs 2"):
        paired_difference([1, 0, 1], [1, 0])


def test_a_general_drop_inside_the_cap_promotes_and_the_reason_gives_its_interval():
    kept = Evidence(candidate=[1.0] * 90 + [0.0] * 10, base=[0.0] * 100, regression=[0.02, 0.0, 0.01, 0.03] * 50,
                    regression_metric="general_drop")
    decision = decide(METRIC, 0.9, None, 0.0, max_regression=0.10, evidence=kept)
    assert decision.promoted, decision.reason
    assert decision.reason.startswith("no champion yet; finetuned_json_exact_match gained 0.900 [95% CI")
    assert "general_drop 0.015 [95% CI" in decision.reason and "below promotion.max_regression 0.1" in decision.reason
    assert set(decision.intervals) == {"gain_over_base", "general_drop"}
    assert decision.intervals["general_drop"]["high"] < 0.10


def test_a_broken_model_is_refused_naming_the_metric_its_interval_and_the_rule():
    broken = Evidence(candidate=[1.0] * 100, regression=[0.6, 0.9, 0.7, 0.8] * 50, regression_metric="general_drop")
    decision = decide(METRIC, 1.0, None, 0.0, max_regression=0.10, evidence=broken)
    assert (decision.promoted, decision.alias) == (False, "challenger")
    assert decision.reason.startswith("general_drop 0.750 [95% CI 0.7")
    assert "is above promotion.max_regression 0.1: the fine-tune lost general ability (rule: champion only if the " \
           "95 % interval lies below promotion.max_regression 0.1)" in decision.reason
    assert decision == decide(METRIC, 1.0, None, 0.0, max_regression=0.10, evidence=broken)  # the same decision


def test_too_few_items_to_tell_a_drop_from_noise_is_said_with_the_size_that_would_tell():
    # 26 probes, 2 lost: 0.077 is under the 0.10 cap as a point, but its interval reaches well over it
    probes = Evidence(candidate=[1.0] * 40, regression=[1.0, 1.0] + [0.0] * 24)
    decision = decide(METRIC, 1.0, None, 0.0, max_regression=0.10, evidence=probes)
    assert not decision.promoted
    assert "regression_drop 0.077 [95% CI 0.000, 0.192; n=26] spans promotion.max_regression 0.1: too few items to " \
           "tell a drop that size from noise; about" in decision.reason
    needed = int(decision.reason.split("; about ")[1].split()[0])
    assert needed > 26
    # at that many items the same drop is decided (the estimate where it was, the interval narrower)
    more = Evidence(candidate=[1.0] * 40, regression=([1.0] + [0.0] * 12) * (needed // 13 + 2))
    assert decide(METRIC, 1.0, None, 0.0, max_regression=0.10, evidence=more).promoted


def test_beating_the_champion_is_a_paired_difference_over_the_same_items():
    champion_items = tuple([1.0] * 80 + [0.0] * 20)
    fingerprint = "f" * 64
    champion = Champion("1", 0.80, fingerprint, champion_items)
    better = [1.0] * 95 + [0.0] * 5  # fixes 15 of the champion's 20 misses, breaks none
    decision = decide(METRIC, 0.95, champion, 0.0, eval_fingerprint=fingerprint, evidence=Evidence(candidate=better))
    assert decision.promoted and "beats champion v1 (0.8): paired difference 0.150 [95% CI" in decision.reason
    # one item better: no evidence, so not champion, and it says what would tell
    one = list(champion_items)
    one[85] = 1.0
    decision = decide(METRIC, 0.81, champion, 0.0, eval_fingerprint=fingerprint, evidence=Evidence(candidate=one))
    assert not decision.promoted and "cannot tell 0.81 from champion v1's 0.8 on 100 items" in decision.reason
    # the same items, scored the same: does not beat it
    same = decide(METRIC, 0.80, champion, 0.0, eval_fingerprint=fingerprint,
                  evidence=Evidence(candidate=list(champion_items)))
    assert not same.promoted and "does not beat champion v1" in same.reason


def test_the_champions_items_come_from_its_runs_eval_table(registry):  # noqa: F811
    uri, client, register = registry
    version = register(finetuned_json_exact_match=0.5)
    run_id = client.get_model_version("booking", version).run_id
    table = {"columns": ["set", "prompt", "finetuned_score"],
             "data": [["task", "a", 1.0], ["regression", "b", 0.0], ["task", "c", 0.0]]}
    client.log_text(run_id, json.dumps(table), "eval_samples.json")
    client.set_registered_model_alias("booking", "champion", version)
    champion = current_champion("booking", METRIC, uri)
    assert champion.items == (1.0, 0.0)
    assert mean_interval(champion.items).estimate == 0.5
