"""Likely causes of a broken invariance: where a scale sweep breaks, order dependence, shifts, the bias gradient."""

from __future__ import annotations

import numpy as np

from bnverify import tolerances as tols
from bnverify.diagnose.common import matching
from bnverify.reference.batchnorm import affine, reduction_axes
from bnverify.tolerances import Tolerance


def scale_break(scale: float, swept: list[tuple[float, bool]], *, gradient: bool = False) -> list[str]:
    """Where a scale invariance breaks says what kind of magnitude dependence the target has.

    ``swept`` is every (scale, held) pair checked.  Each sentence needs its own evidence in the sweep:
    sign dependence only where some ``a`` held and ``-a`` did not (or the reverse); a floor, clamp or
    threshold only where small scales alone broke and moderate ones held; an overflow guard or
    fixed-width accumulator only where large scales alone broke; a constant relative to the input's
    magnitude only where both ends broke and the middle held.  A sweep in which nothing held says
    nothing about where it breaks, so it names nothing.
    """
    where = "backward" if gradient else "forward"
    held = {abs(a): ok for a, ok in swept}
    out = []
    flips = sorted({abs(a) for a, ok in swept if any(b == -a and ok2 != ok for b, ok2 in swept)})
    if flips:
        out.append(f"at |a| = {', '.join(f'{a:.3g}' for a in flips[:4])} one sign of the scale holds and the other "
                   f"breaks: something in the {where} pass depends on the sign (a max without abs, floor-rounding, "
                   "a clamp at 0, abs() in a statistic)")
        return out
    if not any(held.values()):
        return out
    bad = [a for a, ok in swept if not ok]
    small = [a for a in bad if abs(a) < 1]
    large = [a for a in bad if abs(a) > 1]
    if small and not large:
        out.append(f"it holds at moderate scales and breaks only below |a| = {max(abs(a) for a in small):.3g}: an "
                   f"absolute constant in the {where} pass, e.g. a floor or clamp on the variance or std "
                   "(max(std, 1e-3)), a threshold that treats small-variance channels as constant, or fixed-point "
                   "accumulation with an absolute resolution; eps is the only absolute constant batch norm may have")
    elif large and not small:
        out.append(f"it holds at moderate scales and breaks only above |a| = {min(abs(a) for a in large):.3g}: an "
                   f"overflow guard or pre-scaling in the {where} pass that does not scale eps with the data, or an "
                   "accumulator that overflows (fixed-point int64, 16-bit sums)")
    elif small and large:
        out.append(f"it holds at moderate scales and breaks at both ends of the sweep: the {where} pass uses a "
                   "constant relative to the input's magnitude (eps or a clamp scaled by |x|), or quantises with a "
                   "fixed step")
    return out


def order_dependence(y: np.ndarray, yp: np.ndarray, x: np.ndarray, xp: np.ndarray, gamma: np.ndarray | None,
                     beta: np.ndarray | None, eps: float, tol: Tolerance, perm: np.ndarray) -> list[str]:
    """Hypotheses for a training output that depends on the order of the batch: statistics of a prefix.

    Only a prefix whose statistics reproduce ``y`` is named; with none the list is empty."""
    g, b = affine(x, gamma, beta)
    axes = reduction_axes(x.ndim)
    n = x.shape[0]
    for k in range(1, n):
        def prefix(k: int = k) -> np.ndarray:
            head = x[:k]
            mu = head.mean(axis=axes, keepdims=True)
            var = ((head - mu) ** 2).mean(axis=axes, keepdims=True)
            return g * (x - mu) / np.sqrt(var + eps) + b
        if matching(y, tol, [("", prefix)]):
            return [f"the output matches statistics taken from the first {k} of the {n} samples only: batch norm's "
                    "statistics are over the whole batch, so they cannot depend on its order"]
    return []  # no prefix reproduces it: the report says that no known pattern does


SHIFT = ("the output depends on the absolute level of the input: the mean subtracted in training is not the "
         "batch's own (a running/EMA mean, a stale or partial mean), or the variance is taken around a point "
         "other than the batch mean")
"""``t(x + b) != t(x)`` for a per-channel shift ``b``."""


def bias_gradient(db: np.ndarray, gamma: np.ndarray, ivar: np.ndarray, dbeta: np.ndarray,
                  bound: np.ndarray) -> list[str]:
    """A nonzero gradient reaching the bias before batch norm: is it ``gamma/sigma sum(dy)``?

    Without the ``-mean(dy)`` term, ``sum_n dx = gamma / sigma * sum_n dy`` exactly (``ivar = 1/sigma``,
    ``dbeta = sum_n dy``).
    """
    missing = (gamma * ivar).reshape(-1) * dbeta
    if np.all(np.abs(db - missing) <= tols.BIAS_GRAD_MATCH_RTOL * np.abs(missing) + bound):
        return ["the bias gradient is proportional to sum(dy) per channel: the backward lacks the -mean(dy) term "
                "that the mean subtraction contributes (the batch mean treated as a constant)"]
    return []
