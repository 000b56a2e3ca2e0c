"""The dashboard views of the steps' reports, stored and loaded through the real materializer on a local store."""

import json

import numpy as np
import pytest

from llm_engineering.artifacts import Report
from llm_engineering.views import evaluation_views, export_views


def materializer(tmp_path):
    from llm_engineering.orchestration.materializers import ReportMaterializer

    return ReportMaterializer(str(tmp_path / "report"))  # ZenML's fileio: a local path is a local artifact store


def test_a_report_is_stored_as_json_with_its_views_and_loads_as_the_plain_dict(tmp_path):
    evaluation = {"role": "finetuned", "metrics": {"finetuned_json_exact_match": np.float32(0.75)},
                  "samples": [{"set": "task", "prompt": "Book <b>2</b>", "reference": "{}", "output": "{}",
                               "score": 1.0}]}
    report = Report(evaluation, evaluation_views(evaluation))
    store = materializer(tmp_path)
    store.save(report)
    views = store.save_visualizations(report)

    assert {path.rsplit("/", 1)[1]: str(kind) for path, kind in views.items()} == {"eval_samples.html": "html"}
    page = (tmp_path / "report" / "eval_samples.html").read_text()
    assert "Book &lt;b&gt;2&lt;/b&gt;" in page and "<tr class='good'>" in page  # escaped, the scored row marked
    loaded = store.load(Report)
    assert loaded == {**evaluation, "metrics": {"finetuned_json_exact_match": 0.75}} and loaded.views == {}
    assert json.loads((tmp_path / "report" / "report.json").read_text())["role"] == "finetuned"


def test_a_value_that_is_not_json_is_refused_by_name(tmp_path):
    with pytest.raises(TypeError, match="set in a report is not JSON"):
        materializer(tmp_path).save(Report({"modules": {"q_proj"}}))


def test_the_model_card_view_drops_the_yaml_header_and_pairs_base_and_finetuned_answers():
    card = "---\nbase_model: x\n---\n\n# Fine-tune of x\n"
    samples = [{"set": "regression", "prompt": "2+2?", "reference": "4", "base_output": "4", "finetuned_output": "5",
                "base_score": 1.0, "finetuned_score": 0.0}]
    views = export_views(card, samples, {"version": "3", "promotion": "challenger", "train_loss": 0.1})
    assert views["model_card.md"] == "# Fine-tune of x\n"
    assert "<tr class='bad'>" in views["eval_samples.html"] and "challenger" in views["eval_samples.html"]
    assert "train_loss" not in views["eval_samples.html"]
