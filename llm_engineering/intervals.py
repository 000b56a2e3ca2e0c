"""How sure a score is: 95 % intervals for the numbers the registry gate decides on.

- a rate over n items (exact match on 100 rows): Wilson's score interval, which stays inside [0, 1] and is honest at
  0 and 1, where the normal approximation collapses to a point;
- a difference between two models scored on the same items (fine-tune vs base, candidate vs champion): a paired
  bootstrap of the per-item differences. Pairing removes the items' own difficulty from the noise, so it tells a
  smaller difference from noise than two separate intervals would. The resampling is seeded: the same scores always
  give the same interval, so the same gate on the same evaluation always gives the same decision.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import numpy as np

Z95 = 1.959964
BOOTSTRAP_SAMPLES = 4000


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    n: int
    sd: float = 0.0  # of the per-item values (differences): what `items_to_resolve` scales with

    def __str__(self) -> str:
        return f"{self.estimate:.3f} [95% CI {self.low:.3f}, {self.high:.3f}; n={self.n}]"

    def as_dict(self) -> dict:
        return asdict(self)

    def items_to_resolve(self, threshold: float) -> Optional[int]:
        """About how many items would put the interval on one side of `threshold` if the estimate stayed where it is
        (None when the estimate sits on the threshold: no number of items tells it apart)."""
        distance = abs(self.estimate - threshold)
        if distance < 1e-9:
            return None
        return max(self.n + 1, math.ceil((Z95 * self.sd / distance) ** 2))


def wilson(successes: float, n: int) -> Interval:
    """The 95 % Wilson score interval of a rate of `successes` in `n` (fractional successes are allowed: a mean of
    0/1 scores times n)."""
    if n <= 0:
        return Interval(float("nan"), 0.0, 1.0, 0)
    p = successes / n
    denominator = 1 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / denominator
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denominator
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half), n, math.sqrt(p * (1 - p)))


def paired_difference(a: Sequence[float], b: Sequence[float], seed: int = 0) -> Interval:
    """The mean of a[i] - b[i] with a 95 % percentile bootstrap interval (items resampled with replacement)."""
    if len(a) != len(b):
        raise ValueError(f"paired scores need the same items: {len(a)} vs {len(b)} scores")
    return mean_interval(np.asarray(a, dtype=float) - np.asarray(b, dtype=float), seed)


def mean_interval(values: Sequence[float], seed: int = 0) -> Interval:
    """The mean of per-item values with a 95 % percentile bootstrap interval."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    if n == 0:
        return Interval(float("nan"), float("-inf"), float("inf"), 0)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, n, size=(BOOTSTRAP_SAMPLES, n))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return Interval(float(values.mean()), float(low), float(high), n, float(values.std(ddof=1)) if n > 1 else 0.0)
