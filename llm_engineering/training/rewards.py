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
from typing import Callable

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


def checked(function: Callable, name: str) -> Callable:
    """`function` with its output checked on every call: one finite number (or None) per completion."""

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
        return list(values)

    reward.__name__ = name.replace(":", ".")  # TRL's curve names: rewards/<name>/mean
    return reward


def reward_functions(pref: PreferenceConfig) -> tuple[list[Callable], list[float]]:
    """The configured rewards, checked, and their weights: what GRPOTrainer takes. RewardError before any training."""
    functions = [checked(reward_function(r, pref.max_completion_length), r.function) for r in pref.rewards]
    return functions, [r.weight for r in pref.rewards]


def check_rewards(pref: PreferenceConfig) -> None:
    """At compile time: every configured reward exists and takes TRL's keywords (RewardError naming the one that
    does not)."""
    if pref.method == "grpo":
        reward_functions(pref)
