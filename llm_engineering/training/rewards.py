"""GRPO's reward functions: built-ins that score a completion against the row's reference answer with the evaluation's
own scorers, and a user's own as `module:function` (TRL's signature: `f(prompts, completions, **columns)` returning
one number per completion, or None where it does not apply).

Every function is checked when the pipeline compiles (importable, callable with TRL's keywords) and every call is
checked while training: a wrong number of values, NaN or a non-number stops the step naming the function and the row.
"""

from __future__ import annotations

import importlib
import inspect
import math
from typing import Callable, Optional

from llm_engineering.config import PreferenceConfig, RewardConfig
from llm_engineering.scoring import SCORERS, answer_of, json_fields


class RewardError(ValueError):
    """A reward function that cannot be used, or returned something that is not one number per completion."""


def completion_text(completion) -> str:
    """The answer a completion gives: a conversational completion's assistant text, its <think> block left out."""
    if isinstance(completion, list):
        completion = "".join(m.get("content") or "" for m in completion if m.get("role") == "assistant")
    return answer_of(completion).strip()


def _scored(name: str, score: Callable[[str, str], float]) -> Callable:
    def reward(prompts, completions, reference, **_):
        return [float(score(completion_text(c), r)) for c, r in zip(completions, reference)]

    reward.__name__ = name
    return reward


def _stops(max_completion_length: int) -> Callable:
    def stops(prompts, completions, completion_ids, **_):
        """1 for a completion that ended on its own (the end-of-turn token) before the length limit, else 0."""
        return [float(len(ids) < max_completion_length) for ids in completion_ids]

    return stops


def _length_penalty(max_completion_length: int) -> Callable:
    def length_penalty(prompts, completions, completion_ids, **_):
        """Minus the share of the length limit a completion used: shorter answers score higher."""
        return [-len(ids) / max_completion_length for ids in completion_ids]

    return length_penalty


BUILT_IN = {**SCORERS, "json_fields": json_fields}
LENGTH_REWARDS = {"stops": _stops, "length_penalty": _length_penalty}


def user_reward(spec: str) -> Callable:
    """`module:function`, imported and checked for TRL's keywords (prompts, completions); RewardError naming it."""
    module_name, _, function_name = spec.partition(":")
    if not module_name or not function_name:
        raise RewardError(f"reward {spec!r}: not a built-in ({', '.join(sorted(BUILT_IN | LENGTH_REWARDS))}) "
                          "and not module:function")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        raise RewardError(f"reward {spec!r} cannot be imported: {error}") from error
    if not callable(function):
        raise RewardError(f"reward {spec!r} is not a function")
    parameters = inspect.signature(function).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    missing = [name for name in ("prompts", "completions") if name not in parameters]
    if missing or not takes_any:
        raise RewardError(f"reward {spec!r} must take TRL's keywords: f(prompts, completions, **kwargs) "
                          f"({'missing ' + ', '.join(missing) if missing else 'no **kwargs'})")
    return function


def reward_function(reward: RewardConfig, max_completion_length: int) -> Callable:
    if reward.function in BUILT_IN:
        return _scored(reward.function, BUILT_IN[reward.function])
    if reward.function in LENGTH_REWARDS:
        return LENGTH_REWARDS[reward.function](max_completion_length)
    return user_reward(reward.function)


class SampledCompletions:
    """What GRPO sampled and what each reward gave it: the first `groups` groups of completions at every `every`-th
    step, as table rows (step, prompt, completion, reference, one column per reward): what a user reads to see what
    the rewards actually reward. Filled by the checked reward functions, which see every batch."""

    def __init__(self, every: int, group_size: int, groups: int = 2):
        self.every, self.size = max(1, every), group_size * groups
        self._rows: dict[tuple[int, int], dict] = {}

    def record(self, name: str, prompts, completions, values, columns: dict) -> None:
        state = columns.get("trainer_state")
        step = state.global_step if state is not None else 0
        if step % self.every:
            return
        references = columns.get("reference") or [None] * len(completions)
        for i in range(min(self.size, len(completions))):
            row = self._rows.setdefault((step, i), {
                "step": step, "prompt": _last_user_text(prompts[i]), "completion": completion_text(completions[i]),
                "reference": references[i]})
            row[name] = values[i]

    def rows(self, weights: dict[str, float]) -> list[dict]:
        """Every row recorded, with `total`: the weighted sum the advantages are computed from."""
        return [{**row, "total": sum(w * (row.get(n) or 0.0) for n, w in weights.items())}
                for _, row in sorted(self._rows.items())]


def _last_user_text(prompt) -> str:
    if isinstance(prompt, list):
        return next((m.get("content") or "" for m in reversed(prompt) if m.get("role") == "user"), "")
    return str(prompt)


def checked(function: Callable, name: str, samples: Optional[SampledCompletions] = None) -> Callable:
    """`function` with its output checked on every call: one finite number (or None) per completion; and recorded in
    `samples`."""

    def reward(prompts, completions, **columns):
        values = function(prompts=prompts, completions=completions, **columns)
        if not isinstance(values, (list, tuple)) or len(values) != len(completions):
            count = len(values) if isinstance(values, (list, tuple)) else type(values).__name__
            raise RewardError(f"reward {name!r} returned {count} for {len(completions)} completions: one number per "
                              "completion is needed")
        for i, value in enumerate(values):
            bad = value is not None and (not isinstance(value, (int, float)) or not math.isfinite(value))
            if bad:
                raise RewardError(f"reward {name!r} returned {value!r} for the completion of row {i} of the batch "
                                  f"(prompt {str(prompts[i])[:200]!r}): a finite number or None is needed")
        if samples is not None:
            samples.record(reward.__name__, prompts, completions, values, columns)
        return list(values)

    reward.__name__ = curve_name(name)
    return reward


def curve_name(function: str) -> str:
    """A reward's name in TRL's curves (rewards/<name>/mean) and in the table of samples."""
    return function.replace(":", ".")


def reward_functions(pref: PreferenceConfig, samples: Optional[SampledCompletions] = None) -> list[Callable]:
    """The configured rewards, checked (and recorded in `samples`): what GRPOTrainer takes, in the order of
    `pref.rewards` (their weights go to GRPOConfig). RewardError before any training."""
    return [checked(reward_function(r, pref.max_completion_length), r.function, samples) for r in pref.rewards]


def reward_weights(pref: PreferenceConfig) -> dict[str, float]:
    """Each reward's weight under its curve's name."""
    return {curve_name(r.function): r.weight for r in pref.rewards}


def check_rewards(pref: PreferenceConfig) -> None:
    """At compile time: every configured reward exists and takes TRL's keywords (RewardError naming the one that
    does not)."""
    if pref.method == "grpo":
        reward_functions(pref)
