"""Summaries of timing samples: median, quartiles, and a distribution-free confidence interval.

Timings are skewed (a run is delayed by an interrupt, never sped up), so the centre is the
median and the spread the interquartile range, as pytest-benchmark, torch.utils.benchmark and
triton's ``do_bench`` report them.  How well the median is known is its 95% confidence interval
from order statistics: with ``n`` samples sorted, ``[x_(l), x_(n-l+1)]`` where ``l`` is the
largest rank with ``P(Binomial(n, 1/2) < l) <= 2.5%`` (each sample falls below the true median
with probability 1/2, whatever the distribution).  That needs no normality and no
independence beyond exchangeability; it is undefined below 6 samples.  Its half-width divided
by the median is the *noise* the timers drive below a target (``Policy.max_noise``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

CI_LEVEL = 0.95
"""Coverage of the median's confidence interval."""

Z95 = 1.959963984540054
"""Two-sided 95% standard-normal quantile: turns a 95% CI half-width into a standard error."""


def median_ci_ranks(n: int, level: float = CI_LEVEL) -> tuple[int, int] | None:
    """1-based ranks ``(l, u)`` of the order statistics bounding the median at ``level``; None if n is too small."""
    from scipy.stats import binom

    if n < 1:
        return None
    lo = int(binom.ppf((1 - level) / 2, n, 0.5))
    if binom.cdf(lo - 1, n, 0.5) > (1 - level) / 2:  # ppf rounds up; take the rank whose tail is within
        lo -= 1
    if lo < 1:
        return None
    return lo, n - lo + 1


@dataclass(frozen=True)
class Summary:
    """One arm's samples (seconds): order statistics and the median's 95% CI."""

    n: int
    median: float
    q1: float
    q3: float
    min: float
    max: float
    ci_low: float
    ci_high: float

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    @property
    def ci_half(self) -> float:
        """Half-width of the median's 95% CI (inf when there are too few samples)."""
        return (self.ci_high - self.ci_low) / 2

    @property
    def rel_noise(self) -> float:
        """CI half-width / median: the relative uncertainty of the median."""
        if not self.median > 0 or math.isinf(self.ci_half):
            return float("inf")
        return self.ci_half / self.median

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(iqr=self.iqr, ci_half=self.ci_half, rel_noise=self.rel_noise)
        return d


def summarize(samples: Sequence[float]) -> Summary:
    """Median, quartiles (numpy's linear interpolation), extremes and the median's 95% CI."""
    a = np.sort(np.asarray(samples, dtype=np.float64))
    if a.size == 0:
        raise ValueError("no samples to summarise")
    q1, med, q3 = (float(v) for v in np.percentile(a, [25, 50, 75]))
    ranks = median_ci_ranks(a.size)
    if ranks is None:
        lo, hi = -math.inf, math.inf
    else:
        lo, hi = float(a[ranks[0] - 1]), float(a[ranks[1] - 1])
    return Summary(n=int(a.size), median=med, q1=q1, q3=q3, min=float(a[0]), max=float(a[-1]), ci_low=lo, ci_high=hi)


def paired_log_ratios(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    """``log(a_i / b_i)`` for samples taken in the same round (interleaved): the per-round ratio."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    n = min(x.size, y.size)
    if n == 0:
        return np.zeros(0)
    return np.log(x[:n]) - np.log(y[:n])


def median_and_se(values: Sequence[float]) -> tuple[float, float]:
    """The median of ``values`` and its standard error, ``CI half-width / 1.96`` (inf with < 6 values)."""
    s = summarize(values)
    return s.median, s.ci_half / Z95


LOW_TAIL_FRACTION = 0.10
"""The fastest tenth of a run's samples (at least 3) estimate its undisturbed time."""


def low_tail(samples: Sequence[float], fraction: float = LOW_TAIL_FRACTION) -> tuple[float, float, int]:
    """Mean and standard error of ``log t`` over the fastest ``max(3, ceil(fraction n))`` samples.

    Host-timed calls on a shared machine are bimodal: undisturbed calls, and calls that lost the
    CPU for a scheduler slice (+4 ms at 250 Hz) or took an interrupt.  Which mode the median
    falls in depends on the load of the moment (a 2.0 ms call's median read 2.7 ms in one run and
    6.0 ms in the next); the fastest tenth stays in the undisturbed mode (1.94 vs 2.02 ms).
    The standard error is ``sd / sqrt(k)`` of those ``k`` values: an approximation (they are the
    smallest order statistics, not independent draws) that the perf gate's floor backs up.
    Fewer than 3 samples: infinite error.
    """
    v = np.sort(np.log(np.asarray(samples, dtype=np.float64)))
    if v.size < 3:
        return (float(v.mean()) if v.size else float("nan")), float("inf"), int(v.size)
    k = min(v.size, max(3, math.ceil(fraction * v.size)))
    low = v[:k]
    return float(low.mean()), float(low.std(ddof=1) / math.sqrt(k)), int(k)
