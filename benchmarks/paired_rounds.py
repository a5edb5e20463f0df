"""How sure a median of per-round ratios is: a distribution-free confidence interval from order statistics (the
sign-test interval), and the verdict against a target it supports."""
from __future__ import annotations

from math import comb


def median_interval(values: list[float], confidence: float = 0.9) -> tuple[float, float, float]:
    """(low, high, coverage): the narrowest [x(j), x(n+1-j)] of the sorted values that holds the true median with
    probability >= `confidence`, whatever their distribution, given independent rounds. With too few rounds for that,
    the whole range and its lower coverage."""
    x, n = sorted(values), len(values)
    if not n:
        raise ValueError("no rounds")

    def coverage(j: int) -> float:  # P(x(j) <= median <= x(n+1-j)) = 1 - 2 P(Binomial(n, 1/2) <= j - 1)
        return 1.0 - 2.0 * sum(comb(n, i) for i in range(j)) / 2 ** n
    j = 1
    while j + 1 <= (n + 1) // 2 and coverage(j + 1) >= confidence:
        j += 1
    return x[j - 1], x[n - j], coverage(j)


def verdict(interval: tuple[float, float, float], target: float, confidence: float = 0.9) -> str:
    """Of median_interval's (low, high, coverage): 'met' when it lies at or above `target`, 'missed' when below it,
    else (or with less than `confidence`) 'undecided'."""
    low, high, cov = interval
    if cov < confidence:
        return "undecided"
    return "met" if low >= target else "missed" if high < target else "undecided"
