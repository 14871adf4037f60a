"""Likely causes: when a target is wrong, find which well-known mistake its numbers match.

Each hypothesis recomputes the result in float64 the way a known bug would
(the classes of ANCHORS part A section 6) and tests the target's numbers
against it with the same tolerance.  A match is reported as "likely cause";
nothing is guessed from names.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from bnverify.compare import matches
from bnverify.reference.batchnorm import affine, per_channel, reduction_axes
from bnverify.tolerances import Tolerance

Hypothesis = tuple[str, Callable[[], np.ndarray]]





def _batch(x: np.ndarray) -> tuple[tuple[int, ...], int, np.ndarray, np.ndarray]:
    """``(axes, m, mean, biased var)`` with the statistics broadcastable against ``x``."""
    axes = reduction_axes(x.ndim)
    mu = x.mean(axis=axes, keepdims=True)
    return axes, x.size // x.shape[1], mu, ((x - mu) ** 2).mean(axis=axes, keepdims=True)


def _first_match(actual: np.ndarray, tol: Tolerance, hyps: list[Hypothesis]) -> list[str]:
    out = []
    for text, fn in hyps:
        try:
            with np.errstate(all="ignore"):
                alt = fn()
        except (ValueError, ZeroDivisionError, FloatingPointError):
            continue
        if alt is not None and alt.shape == actual.shape and matches(actual, alt, tol):
            out.append(text)
    return out


def forward_train(
    actual: np.ndarray, x: np.ndarray, gamma: np.ndarray | None, beta: np.ndarray | None, eps: float,
    tol: Tolerance, dtype: torch.dtype, running: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[str]:
    _axes, m, mu, var = _batch(x)
    g, b = affine(x, gamma, beta)
    hyps: list[Hypothesis] = [
        ("the output matches normalisation by the unbiased (m-1) variance; batch norm normalises with the "
         "biased variance (divide by m) and uses m/(m-1) only for the running estimate",
         lambda: g * (x - mu) / np.sqrt(var * m / (m - 1) + eps) + b),
        ("the output matches (x - mean) / (sqrt(var) + eps): eps belongs inside the square root, sqrt(var + eps)",
         lambda: g * (x - mu) / (np.sqrt(var) + eps) + b),
        ("the output matches normalisation without eps: sqrt(var + eps) is needed for near-constant channels",
         lambda: g * (x - mu) / np.sqrt(var) + b),
        ("the output matches gamma and beta swapped (beta * xhat + gamma)",
         lambda: b * (x - mu) / np.sqrt(var + eps) + g),
        ("the output matches the normalised input without the affine transform: gamma and beta were not applied",
         lambda: (x - mu) / np.sqrt(var + eps)),
    ]
    if x.ndim > 2:
        def per_position() -> np.ndarray:
            mu0 = x.mean(axis=0, keepdims=True)
            v0 = ((x - mu0) ** 2).mean(axis=0, keepdims=True)
            return g * (x - mu0) / np.sqrt(v0 + eps) + b
        hyps.append(("the output matches statistics taken over the batch axis only (one mean per channel AND "
                     "position); batch norm reduces over N and every spatial axis", per_position))
    def layer_norm() -> np.ndarray:
        ax = tuple(range(1, x.ndim))
        mu1 = x.mean(axis=ax, keepdims=True)
        v1 = ((x - mu1) ** 2).mean(axis=ax, keepdims=True)
        return g * (x - mu1) / np.sqrt(v1 + eps) + b
    hyps.append(("the output matches statistics per sample (layer norm); batch norm reduces over the batch", layer_norm))
    if running is not None:
        rm, rv = running
        hyps.append(("the output matches the running statistics: training mode must normalise with the batch's own statistics",
                     lambda: g * (x - per_channel(rm, x.ndim)) / np.sqrt(per_channel(rv, x.ndim) + eps) + b))
    causes = _first_match(actual, tol, hyps)
    if not causes:
        causes += _precision_causes(actual, x, eps, dtype)
    return causes


def _precision_causes(actual: np.ndarray, x: np.ndarray, eps: float, dtype: torch.dtype) -> list[str]:
    out = []
    axes = reduction_axes(x.ndim)
    mu = x.mean(axis=axes)
    var = ((x - per_channel(mu, x.ndim)) ** 2).mean(axis=axes)
    kappa = float(np.max(np.sqrt(mu**2 + var) / np.sqrt(var + eps)))
    if not np.all(np.isfinite(actual)) and dtype in (torch.float16, torch.bfloat16):
        out.append("NaN/inf with 16-bit input: sums or sums of squares kept in 16 bits overflow (float16 max 65504); "
                   "accumulate statistics in float32")
    elif kappa > 30:
        out.append(f"the error grows with |mean|/std (here up to {kappa:.3g}): the variance is probably computed as "
                   "E[x^2] - E[x]^2 (catastrophic cancellation); compute it in two passes or with Welford's update")
    return out


def forward_eval(
    actual: np.ndarray, x: np.ndarray, gamma: np.ndarray | None, beta: np.ndarray | None,
    rm: np.ndarray, rv: np.ndarray, eps: float, tol: Tolerance,
) -> list[str]:
    g, b = affine(x, gamma, beta)
    mean = per_channel(rm, x.ndim)
    var = per_channel(rv, x.ndim)
    _axes, _m, mu, bvar = _batch(x)
    hyps: list[Hypothesis] = [
        ("eval output matches the batch's own statistics: eval mode must use running_mean/running_var "
         "(is the module's training flag read?)", lambda: g * (x - mu) / np.sqrt(bvar + eps) + b),
        ("eval output matches (x - running_mean) / (sqrt(running_var) + eps): eps belongs inside the square root",
         lambda: g * (x - mean) / (np.sqrt(var) + eps) + b),
        ("eval output matches division by running_var + eps without the square root (running_var treated as a std)",
         lambda: g * (x - mean) / (var + eps) + b),
        ("eval output matches gamma and beta swapped", lambda: b * (x - mean) / np.sqrt(var + eps) + g),
    ]
    return _first_match(actual, tol, hyps)


def backward_train(
    which: str, actual: np.ndarray, x: np.ndarray, dy: np.ndarray, gamma: np.ndarray | None, eps: float,
    tol: Tolerance,
) -> list[str]:
    axes, m, mu, var = _batch(x)
    g, _ = affine(x, gamma, None)
    s = np.sqrt(var + eps)
    xhat = (x - mu) / s
    mdy = dy.mean(axis=axes, keepdims=True)
    mdyx = (dy * xhat).mean(axis=axes, keepdims=True)
    if which == "dx":
        hyps: list[Hypothesis] = [
            ("dx matches gamma/sigma * dy: the backward treats the batch mean and variance as constants and drops "
             "both correction terms (-mean(dy) and -xhat*mean(dy*xhat))", lambda: g / s * dy),
            ("dx matches gamma/sigma * (dy - mean(dy)): the variance's gradient term -xhat*mean(dy*xhat) is missing",
             lambda: g / s * (dy - mdy)),
            ("dx matches gamma/sigma * (dy - xhat*mean(dy*xhat)): the mean's gradient term -mean(dy) is missing",
             lambda: g / s * (dy - xhat * mdyx)),
            ("dx matches a variance derivative with 1/(m-1): the batch variance is biased (1/m) in the forward pass, "
             "so its derivative carries 1/m", lambda: g / s * (dy - mdy - xhat * mdyx * m / (m - 1))),
            ("dx matches the gradient without gamma: dxhat = dy * gamma was skipped", lambda: 1 / s * (dy - mdy - xhat * mdyx)),
        ]
        return _first_match(actual, tol, hyps)
    if which == "dgamma":
        return _first_match(actual, tol, [
            ("dgamma matches sum(dy * x): it must be sum(dy * xhat), with the normalised input",
             lambda: (dy * x).sum(axis=axes)),
            ("dgamma matches sum(dy): dgamma and dbeta are swapped", lambda: dy.sum(axis=axes)),
        ])
    return _first_match(actual, tol, [
        ("dbeta matches sum(dy * xhat): dgamma and dbeta are swapped", lambda: (dy * xhat).sum(axis=axes)),
        ("dbeta matches mean(dy): dbeta is a sum over the batch, not a mean", lambda: dy.mean(axis=axes)),
    ])


def backward_eval(actual: np.ndarray, x: np.ndarray, dy: np.ndarray, gamma: np.ndarray | None, eps: float,
                  tol: Tolerance) -> list[str]:
    causes = backward_train("dx", actual, x, dy, gamma, eps, tol)
    axes, _m, mu, var = _batch(x)
    g, _ = affine(x, gamma, None)
    s = np.sqrt(var + eps)
    xhat = (x - mu) / s
    train_dx = g / s * (dy - dy.mean(axis=axes, keepdims=True) - xhat * (dy * xhat).mean(axis=axes, keepdims=True))
    if matches(actual, train_dx, tol):
        return ["eval-mode dx matches the training-mode gradient with batch statistics: in eval the running "
                "statistics are constants and dx = gamma / sqrt(running_var + eps) * dy"]
    return [c for c in causes if "constants" not in c]


# --------------------------------------------------------------------------- invariance (suite `invariance`)

def scale_break(scale: float, swept: list[tuple[float, bool]], *, gradient: bool = False) -> list[str]:
    """Where a scale invariance breaks says what kind of magnitude dependence the target has.

    ``swept`` is every (scale, held) pair checked.  Small scales alone point
    at an absolute floor, clamp or threshold (or an absolute resolution);
    large ones alone at an overflow guard or a fixed-width accumulator; a
    difference between ``a`` and ``-a`` at code that looks at the sign.
    """
    bad = [a for a, ok in swept if not ok]
    small = [a for a in bad if abs(a) < 1]
    large = [a for a in bad if abs(a) > 1]
    where = "backward" if gradient else "forward"
    out = []
    if any(a < 0 for a, _ in swept):
        out.append("the output does not flip sign exactly with the input: something in the "
                   f"{where} pass depends on the sign (a max without abs, floor-rounding, a clamp at 0, abs() "
                   "in a statistic)")
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
        out.append(f"it breaks at both ends of the scale sweep: the {where} pass uses a constant relative to the "
                   "input's magnitude (eps or a clamp scaled by |x|), or quantises with a fixed step")
    return out


def order_dependence(y: np.ndarray, yp: np.ndarray, x: np.ndarray, xp: np.ndarray, gamma: np.ndarray | None,
                     beta: np.ndarray | None, eps: float, tol: Tolerance, perm: np.ndarray) -> list[str]:
    """Hypotheses for a training output that depends on the order of the batch."""
    g, b = affine(x, gamma, beta)
    axes = reduction_axes(x.ndim)
    n = x.shape[0]
    for k in range(1, n):
        def prefix(k: int = k) -> np.ndarray:
            head = x[:k]
            mu = head.mean(axis=axes, keepdims=True)
            var = ((head - mu) ** 2).mean(axis=axes, keepdims=True)
            return g * (x - mu) / np.sqrt(var + eps) + b
        if _first_match(y, tol, [("", prefix)]):
            return [f"the output matches statistics taken from the first {k} of the {n} samples only: batch norm's "
                    "statistics are over the whole batch, so they cannot depend on its order"]
    return ["the output depends on the order of the samples: a sequential or partial statistic (a prefix, a "
            "cumulative mean, a per-sample update of the stats) instead of one mean and variance of the whole batch"]
