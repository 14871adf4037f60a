"""Banded verdicts: an estimate, the band its measured noise allows, and one of three outcomes.

Everything in bnverify that a statistic decides (a seed claim, the convergence suite's band) is
decided here, by one rule: a claim is *reproduced* when the whole band lies on its side of the
threshold, *not reproduced* when the whole band lies on the other side, and *inconclusive* when
the band straddles the threshold.  No outcome is decided by a difference smaller than the noise
that was measured for it.

Derivation
----------
A claim is a statement "quantity ``q`` is above (or below) ``threshold``", where ``q`` is measured
once per seed: ``x_1 .. x_n`` (a generalisation gap, a speed-up, an accuracy margin).  Two kinds
of noise move the estimate ``x_bar = mean(x_i)``:

* **seed-to-seed**: another set of seeds draws other initial weights and data orders.  Its
  spread is the sample standard deviation ``s_seed`` of the ``x_i`` (``n - 1`` degrees of
  freedom); the mean of ``n`` seeds carries ``s_seed / sqrt(n)``.
* **run-to-run**: the same seed on another machine (other CPU kernels: AVX2 or AVX-512, another
  GEMM blocking, another library version) rounds differently, and training amplifies last-bit
  differences epoch after epoch.  A *twin* run measures it: the same experiment and seed,
  trained with a second correct implementation of the same arithmetic.  With ``k`` pairs of
  (twin, original) values the spread of one run is ``s_run = sqrt(mean(d_j^2) / 2)``,
  ``d_j = twin_j - original_j`` (the difference of two runs has twice a run's variance;
  ``k`` degrees of freedom).  Each seed's value on another machine moves by ``s_run``, the
  mean of ``n`` by ``s_run / sqrt(n)``.

Both add in quadrature, ``sigma^2 = s_seed^2 + s_run^2`` (conservative: the seed spread
already holds one draw of rounding noise), with Welch-Satterthwaite degrees of freedom

    df = sigma^4 / ( s_seed^4 / (n - 1) + s_run^4 / k ),

and the band is ``x_bar +/- h`` with

    h = max( t_{conf, df} * sigma / sqrt(n),  floor ),

``t_{conf, df}`` the one-sided ``conf`` quantile of Student's t (``BAND_CONFIDENCE`` = 0.99 in
``bnverify.tolerances``: each edge of the band is a one-sided 99 % bound, so a claim whose true
value sits exactly at its threshold is reported reproduced, or not reproduced, in under 1 % of
studies).  ``floor`` is what the measurement itself can resolve, so that a band never collapses
to zero when every seed gives the same number: for an accuracy on ``N`` test examples the
binomial bound ``z_conf sqrt(p (1 - p) / N)`` (:func:`binomial_floor`), for an accuracy on one
batch of ``B`` examples one example, ``1 / B``.  With fewer than two seeds the seed-to-seed
spread is not measured and the band is unbounded (inconclusive) unless a run-to-run spread or a
floor bounds it; the claims use two seeds or more.

Outcomes combine: a claim made of several conditions that must all hold is reproduced when every
condition is, not reproduced when any is not, inconclusive otherwise (:func:`all_of`); a claim
that holds when any of its conditions does (some learning rate at which ...) is reproduced when
one is, not reproduced when all are not, inconclusive otherwise (:func:`any_of`).

The convergence suite's noise band (:func:`bnverify.convergence.verdict.compare`) is the same
construction for a two-sample comparison (target seeds against reference seeds, hence
``sqrt(1/n_r + 1/n_t)`` in place of ``1 / sqrt(n)``) and uses :func:`t_quantile`,
:func:`run_spread` and :func:`binomial_floor` from here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bnverify.tolerances import BAND_CONFIDENCE

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
INCONCLUSIVE = "inconclusive"
OUTCOMES = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)


def t_quantile(confidence: float, df: float) -> float:
    """One-sided ``confidence`` quantile of Student's t with ``df`` degrees of freedom (normal for ``inf``)."""
    from scipy import stats

    if not math.isfinite(df):
        return float(stats.norm.ppf(confidence))
    if df <= 0:
        return math.inf
    return float(stats.t.ppf(confidence, df))


def z_quantile(confidence: float = BAND_CONFIDENCE) -> float:
    """One-sided ``confidence`` quantile of the standard normal (2.326 at 0.99)."""
    return t_quantile(confidence, math.inf)


def binomial_floor(p: np.ndarray | float, n: int, z: float) -> np.ndarray:
    """z times the binomial standard error of an accuracy ``p`` measured on ``n`` examples."""
    lo = 0.5 / max(n, 1)
    pp = np.clip(np.asarray(p, dtype=np.float64), lo, 1 - lo)
    return z * np.sqrt(pp * (1 - pp) / max(n, 1))


def run_spread(differences: Iterable[float] | np.ndarray, axis: int = 0) -> np.ndarray | float:
    """Run-to-run standard deviation of one run from twin differences ``d = twin - original``:
    ``sqrt(mean(d^2) / 2)`` (0 without pairs)."""
    d = np.asarray(list(differences) if not isinstance(differences, np.ndarray) else differences,
                   dtype=np.float64)
    if d.size == 0:
        return 0.0
    out = np.sqrt(np.mean(d**2, axis=axis) / 2.0)
    return float(out) if np.ndim(out) == 0 else out


def _sd(values: Sequence[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) >= 2 else 0.0


@dataclass(frozen=True)
class Band:
    """An estimate with its band and the claim's threshold; :attr:`outcome` is one of :data:`OUTCOMES`.

    ``above``: the claim holds when the quantity is above the threshold (else below).  ``values``
    are the per-seed values, ``s_seed``/``s_run`` the measured spreads, ``df`` and ``t`` the
    degrees of freedom and quantile, ``floor`` the resolution floor, ``fmt`` how numbers print.
    """

    name: str
    estimate: float
    half_width: float
    threshold: float
    above: bool
    values: tuple[float, ...]
    s_seed: float
    s_run: float
    run_pairs: int
    df: float
    t: float
    floor: float
    confidence: float
    fmt: str = "{:.3f}"

    @property
    def low(self) -> float:
        return self.estimate - self.half_width

    @property
    def high(self) -> float:
        return self.estimate + self.half_width

    @property
    def outcome(self) -> str:
        if not math.isfinite(self.estimate):
            return INCONCLUSIVE
        holds_low, holds_high = (self.low > self.threshold, self.high > self.threshold) if self.above else (
            self.high < self.threshold, self.low < self.threshold)
        if holds_low and holds_high:
            return REPRODUCED
        if not holds_low and not holds_high:
            return NOT_REPRODUCED
        return INCONCLUSIVE

    @property
    def margin(self) -> float:
        """How far the band's near edge clears the threshold on the claim's side (negative: it does not)."""
        return (self.low - self.threshold) if self.above else (self.threshold - self.high)

    def _f(self, x: float) -> str:
        return "inf" if x == math.inf else "-inf" if x == -math.inf else self.fmt.format(x)

    def describe(self) -> str:
        """``name estimate [low, high] (claim: > threshold): outcome``, one line."""
        rel = ">" if self.above else "<"
        return (f"{self.name} {self._f(self.estimate)} [{self._f(self.low)}, {self._f(self.high)}] "
                f"(claim: {rel} {self._f(self.threshold)}; n={len(self.values)}): {self.outcome}")

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(low=self.low, high=self.high, outcome=self.outcome, values=list(self.values))
        d.pop("fmt")
        return d


def band(
    name: str,
    values: Iterable[float],
    threshold: float,
    *,
    above: bool = True,
    run_differences: Iterable[float] = (),
    floor: float = 0.0,
    confidence: float = BAND_CONFIDENCE,
    fmt: str = "{:.3f}",
) -> Band:
    """The band of the mean of per-seed ``values`` (see the module docstring for the formula).

    ``run_differences``: twin minus original values of the same seeds (run-to-run spread).
    Non-finite values (a run that produced no number) make the estimate non-finite, and the
    outcome inconclusive: callers map a crashed or diverged run to the value it scores.
    """
    v = tuple(float(x) for x in values)
    d = [float(x) for x in run_differences if math.isfinite(float(x))]
    n = len(v)
    est = float(np.mean(v)) if n else math.nan
    s_seed = _sd(v) if n >= 2 and all(math.isfinite(x) for x in v) else 0.0
    s_run = float(run_spread(d)) if d else 0.0
    var = s_seed**2 + s_run**2
    parts = [(s_seed**2, n - 1), (s_run**2, len(d))]
    denom = sum(c**2 / k for c, k in parts if c > 0 and k > 0)
    if var > 0 and denom > 0:
        df = var**2 / denom
    else:
        df = math.inf  # nothing varied: the band is the floor
    t = t_quantile(confidence, df)
    if n < 2 and not d:
        half = math.inf if floor <= 0 else float(floor)  # a single seed and no twin: only the floor bounds it
    else:
        half = max(t * math.sqrt(var / max(n, 1)), float(floor)) if math.isfinite(t) else math.inf
    return Band(name, est, half, float(threshold), bool(above), v, s_seed, s_run, len(d), float(df), t,
                float(floor), float(confidence), fmt)


def all_of(outcomes: Iterable[str]) -> str:
    """Every condition must hold: reproduced if all are, not reproduced if any is not, else inconclusive."""
    o = list(outcomes)
    if NOT_REPRODUCED in o:
        return NOT_REPRODUCED
    return REPRODUCED if o and all(x == REPRODUCED for x in o) else INCONCLUSIVE


def any_of(outcomes: Iterable[str]) -> str:
    """One condition suffices: reproduced if any is, not reproduced if all are not, else inconclusive."""
    o = list(outcomes)
    if REPRODUCED in o:
        return REPRODUCED
    return NOT_REPRODUCED if o and all(x == NOT_REPRODUCED for x in o) else INCONCLUSIVE
