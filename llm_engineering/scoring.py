"""How an answer is scored against its reference: the evaluation's metrics and GRPO's rewards use the same functions,
so a reward optimises exactly what the evaluation measures."""

from __future__ import annotations

import json
import re


def json_equal(output: str, reference: str) -> bool:
    try:
        return json.loads(output) == json.loads(reference)
    except (json.JSONDecodeError, TypeError):
        return False


def json_valid(output: str, reference: str) -> bool:
    """The output parses as JSON (for tasks whose answers are structured but not unique)."""
    try:
        json.loads(output)
        return True
    except json.JSONDecodeError:
        return False


def rouge_l(output: str, reference: str) -> float:
    """ROUGE-L F-measure over whitespace tokens: longest common subsequence, as in Lin (2004) with beta = 1."""
    out, ref = output.split(), reference.split()
    if not out or not ref:
        return float(out == ref)
    previous = [0] * (len(ref) + 1)
    for token in out:
        current = [0]
        for j, ref_token in enumerate(ref):
            current.append(previous[j] + 1 if token == ref_token else max(previous[j + 1], current[j]))
        previous = current
    lcs = previous[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(out), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def contains(output: str, reference: str) -> bool:
    """The reference occurs in the output as a whole word or number, ignoring case ("Paris" in "It is Paris.")."""
    pattern = r"(?<![0-9a-z])" + re.escape(reference.strip().lower()) + r"(?![0-9a-z])"
    return re.search(pattern, output.lower()) is not None


THINKING = re.compile(r"^\s*<think>.*?</think>\s*", re.DOTALL)


def answer_of(output: str) -> str:
    """The answer a reasoning model gives after its <think> block (Qwen3, DeepSeek-R1 style): what is scored."""
    return THINKING.sub("", output, count=1)


SCORERS = {
    "exact_match": lambda output, reference: output.strip() == reference.strip(),
    "contains": contains,
    "json_exact_match": json_equal,
    "json_valid": json_valid,
    "rouge_l": rouge_l,
}


def json_fields(output: str, reference: str) -> float:
    """Partial credit for a JSON record: the share of the reference's fields the output has with the same value
    (keys the reference lacks cost as much as a missing one); 0 for output that is not a JSON object."""
    try:
        got, want = json.loads(output), json.loads(reference)
    except (json.JSONDecodeError, TypeError):
        return 0.0
    if not isinstance(got, dict) or not isinstance(want, dict) or not want:
        return float(got == want)
    right = sum(1 for key, value in want.items() if key in got and got[key] == value)
    return right / (len(want) + len(got.keys() - want.keys()))
