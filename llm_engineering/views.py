"""What ZenML's dashboard shows for the steps' outputs (artifact visualizations): the data summary and token-length
histogram, the loss curve, the merge fidelity report, the evaluation samples and the model card. Plain Python, no
ZenML; `orchestration.materializers` stores them next to the artifact."""

from __future__ import annotations

import html
from typing import Any, Callable, Iterable

STYLE = ("<style>body{font:14px system-ui,sans-serif;margin:12px}table{border-collapse:collapse;margin:8px 0}"
         "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top;white-space:pre-wrap}"
         "th{background:#f3f3f3}.bad{background:#fde2e2}.good{background:#e2f5e2}</style>")


def page(title: str, *parts: str) -> str:
    return f"<!doctype html><html><head><meta charset='utf-8'>{STYLE}</head><body><h3>{html.escape(title)}</h3>" \
           + "".join(parts) + "</body></html>"


def key_values(values: dict[str, Any]) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_cell(v))}</td></tr>"
                   for k, v in values.items())
    return f"<table>{rows}</table>"


def table(rows: Iterable[dict], columns: list[str], classify: Callable[[dict], str] = lambda row: "") -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(f"<tr class='{classify(row)}'>" + "".join(f"<td>{html.escape(_cell(row.get(c)))}</td>"
                                                          for c in columns) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def data_views(summary: dict, sources: list[dict], histogram_png: bytes) -> dict[str, bytes | str]:
    figures = {k: v for k, v in summary.items() if not isinstance(v, (list, dict)) and not k.startswith("source_")}
    invalid = summary.get("invalid_examples") or []
    parts = [key_values(figures)]
    if len(sources) > 1:
        parts.append("<h4>Sources</h4>" + table(sources, sorted({k for s in sources for k in s})))
    if invalid:
        parts.append("<h4>Invalid rows (first ones)</h4><ul>" + "".join(f"<li>{html.escape(str(e))}</li>"
                                                                         for e in invalid) + "</ul>")
    return {"data_summary.html": page(f"Data: {summary.get('source', '')}", *parts),
            "token_lengths.png": histogram_png}


def merge_views(report: dict, tolerance: float | None = None) -> dict[str, str]:
    note = f"<p>Fails the run above max |Δlogit| {tolerance}.</p>" if tolerance is not None else ""
    return {"merge_report.html": page("Merge fidelity: adapter model vs merged model", key_values(report), note)}


def evaluation_views(evaluation: dict) -> dict[str, str]:
    role = evaluation.get("role", "")
    return {"eval_samples.html": page(
        f"Evaluation of the {role} model", key_values(evaluation.get("metrics", {})),
        table(evaluation.get("samples", []), ["set", "prompt", "reference", "output", "score"], _scored))}


def export_views(card: str, samples: list[dict], summary: dict) -> dict[str, str]:
    """The model card as Markdown (without its YAML header) and base vs fine-tuned answers side by side."""
    body = card.split("\n---\n", 1)[1] if card.startswith("---\n") and "\n---\n" in card else card
    columns = list(samples[0]) if samples else []  # base, (the preference run's start,) fine-tuned
    headline = {k: v for k, v in summary.items() if k in ("registered_model_name", "version", "promotion",
                                                          "promotion_reason", "export_dir", "regression_drop")}
    return {"model_card.md": body.lstrip(),
            "eval_samples.html": page("Base vs " + ("start vs " if "start_output" in columns else "") + "fine-tuned",
                                      key_values(headline),
                                      table(samples, columns, _compared))}


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else "" if value is None else str(value)


def _scored(row: dict) -> str:
    score = row.get("score")
    return "" if score is None else "good" if score >= 1 else "bad" if score <= 0 else ""


def _compared(row: dict) -> str:
    base, tuned = row.get("base_score"), row.get("finetuned_score")
    return "" if base is None or tuned is None or base == tuned else "good" if tuned > base else "bad"
