"""Likely causes of a broken invariance: where a scale sweep breaks, order dependence, shifts, the bias gradient."""

from __future__ import annotations

import numpy as np

from bnverify import tolerances as tols
from bnverify.diagnose.common import matching, observed
from bnverify.reference.batchnorm import affine, reduction_axes
from bnverify.tolerances import Tolerance


def scale_break(scale: float, swept: list[tuple[float, bool]], *, gradient: bool = False) -> list[str]:
    """Where a scale invariance breaks: what the sweep observed, never a mechanism it did not simulate.

    ``swept`` is every (scale, held) pair checked.  Each sentence needs its own evidence in the sweep:
    sign dependence only where some ``a`` held and ``-a`` did not (or the reverse); a dependence on small
    magnitudes only where small scales alone broke and moderate ones held; on large magnitudes only
    where large scales alone broke; on both only where both ends broke and the middle held.  A sweep in
    which nothing held says nothing about where it breaks, so it names nothing.  Each sentence says what
    the sweep shows (the output depends on the sign, or on the absolute magnitude) and is marked as
    observed; the mechanisms it lists behave that way but were not simulated (the forward hypotheses,
    which are, are tried first by the suite).
    """
    where = "backward" if gradient else "forward"
    held = {abs(a): ok for a, ok in swept}
    out = []
    flips = sorted({abs(a) for a, ok in swept if any(b == -a and ok2 != ok for b, ok2 in swept)})
    if flips:
        out.append(observed(f"at |a| = {', '.join(f'{a:.3g}' for a in flips[:4])} one sign of the scale holds and the "
                            f"other breaks, so the {where} pass depends on the sign of its input (a max without abs, "
                            "floor-rounding, a clamp at 0 or abs() in a statistic would; none was simulated)"))
        return out
    if not any(held.values()):
        return out
    bad = [a for a, ok in swept if not ok]
    small = [a for a in bad if abs(a) < 1]
    large = [a for a in bad if abs(a) > 1]
    if small and not large:
        out.append(observed(f"it holds at moderate scales and breaks only below |a| = {max(abs(a) for a in small):.3g}, "
                            f"so the {where} pass depends on the absolute magnitude of small inputs (an absolute "
                            "constant would: a floor or clamp on the variance or std, a threshold for near-constant "
                            "channels, fixed-point accumulation; none was simulated); eps is the only absolute "
                            "constant batch norm may have"))
    elif large and not small:
        out.append(observed(f"it holds at moderate scales and breaks only above |a| = {min(abs(a) for a in large):.3g}, "
                            f"so the {where} pass depends on the absolute magnitude of large inputs (an overflow "
                            "guard or pre-scaling that does not scale eps with the data, or an accumulator that "
                            "overflows, would; none was simulated)"))
    elif small and large:
        out.append(observed(f"it holds at moderate scales and breaks at both ends of the sweep, so the {where} pass "
                            "depends on the absolute magnitude of its input (a constant relative to |x| or a fixed "
                            "quantisation step would; none was simulated)"))
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


SHIFT = observed("the output depends on the absolute level of the input: a per-channel shift changes it")
"""``t(x + b) != t(x)`` for a per-channel shift ``b``: the sweep's own observation.  The mechanisms (a
running or stale mean subtracted, a variance around another point) are not simulated here; the forward
hypotheses (``diagnose.forward.train_output``) test them on the shifted output."""


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
