"""The console's own parts: progress lines off a terminal, and other libraries' noise filtered at its source while
our own warnings stay. (The stage lines and the summary are asserted on a real pipeline run: test_pipeline.py and
test_default_pipeline.py.)"""

import logging
import warnings

from llm_engineering import console


def test_off_a_terminal_progress_is_a_line_every_fifth_with_the_latest_figures(capsys, monkeypatch):
    monkeypatch.setenv("LLM_ENGINEERING_PROGRESS", "lines")
    with console.Progress(50, "training", unit="step") as progress:
        for step in range(50):
            progress.update(1, loss=1.0 / (step + 1))
            progress.update(0)  # a log entry between steps prints nothing new
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[1].split("(")[0].strip() for line in lines] == ["20%", "40%", "60%", "80%", "100%"]
    assert lines[-1].startswith("    training: 100% (50/50 step,") and "loss 0.02" in lines[-1]


def test_foreign_deprecations_and_the_comet_nag_are_dropped_and_ours_are_kept(caplog, monkeypatch):
    from transformers import TrainingArguments
    from transformers.integrations import integration_utils

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        console.quiet_foreign_noise()
        # a real transformers 5 deprecation (the old name of activation checkpointing)
        TrainingArguments(output_dir="unused", gradient_checkpointing=True, use_cpu=True, report_to=[])
        warnings.warn("ours: a config value is ignored", FutureWarning)  # from this test, not a foreign module
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "gradient_checkpointing" in m], messages
    assert "ours: a config value is ignored" in messages

    # transformers asks for a Comet key whenever comet_ml is installed (it is: the comet extra)
    monkeypatch.setattr(integration_utils, "_is_comet_configured", False)
    monkeypatch.setattr(integration_utils, "_is_comet_recent_enough", True)
    monkeypatch.setattr(integration_utils, "_is_comet_installed", True)
    with caplog.at_level(logging.INFO):
        logging.getLogger("transformers").propagate = True
        integration_utils.is_comet_available()
        logging.getLogger("llm_engineering.data.prepare").warning("3 of 20 eval rows are also training rows")
    assert not [r for r in caplog.records if "Comet API Key" in r.getMessage()]
    assert [r for r in caplog.records if "eval rows are also training rows" in r.getMessage()]


def test_a_stage_line_carries_the_figure_that_matters():
    line = console.stage_figure("train_sft", {"train_steps": 50.0, "train_loss_first": 0.63, "train_loss_final": 0.05,
                                              "train_tokens_per_second": 232.2, "train_resumed_from_step": 20.0})
    assert line == "50 steps, loss 0.630 -> 0.050, 232 tokens/s, resumed from step 20"
    assert console.headline({"base_json_exact_match": 0.0, "finetuned_json_exact_match": 0.875,
                             "finetuned_stop_rate": 1.0, "regression_drop": 0.077, "version": "3",
                             "registered_model_name": "smollm2-booking", "promotion": "champion"}) == \
        "json_exact_match 0.000 -> 0.875, regression_drop 0.077, smollm2-booking v3 @champion"
    # each figure with its 95 % interval where the evaluation logged one
    assert console.headline({"base_json_exact_match": 0.0, "finetuned_json_exact_match": 0.85,
                             "finetuned_json_exact_match_ci_low": 0.767, "finetuned_json_exact_match_ci_high": 0.907,
                             "finetuned_general_agreement": 0.97, "finetuned_general_probability": 0.6, "general_drop": 0.03, "general_drop_ci_low": 0.02,
                             "general_drop_ci_high": 0.041}) == \
        "json_exact_match 0.000 -> 0.850 [0.767, 0.907], general_drop 0.030 [0.020, 0.041]"
