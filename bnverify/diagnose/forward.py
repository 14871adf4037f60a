"""Likely causes of a wrong forward output: training mode, eval mode, non-contiguous input."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from bnverify import tolerances as tols
from bnverify.diagnose.common import Hypothesis, batch, matching
from bnverify.reference.batchnorm import affine, per_channel, reduction_axes
from bnverify.tolerances import Tolerance


def train_output(
    actual: np.ndarray, x: np.ndarray, gamma: np.ndarray | None, beta: np.ndarray | None, eps: float,
    tol: Tolerance, dtype: torch.dtype, running: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[str]:
    """A training-mode output: the known mistakes of normalisation, affine step and reduction axes."""
    _axes, m, mu, var = batch(x)
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
    hyps += channel_mixing(x, gamma, beta, eps)
    if running is not None:
        rm, rv = running
        hyps.append(("the output matches the running statistics: training mode must normalise with the batch's own statistics",
                     lambda: g * (x - per_channel(rm, x.ndim)) / np.sqrt(per_channel(rv, x.ndim) + eps) + b))
    for e in FIXED_EPS:
        if abs(e - eps) > 1e-3 * eps:
            def with_fixed_eps(e: float = e) -> np.ndarray:
                return g * (x - mu) / np.sqrt(var + e) + b

            hyps.append((f"the output matches eps = {e:g} everywhere, not the eps it was given ({eps:g}): eps is a "
                         "constant in the code (a default written into the formula) instead of the argument",
                         with_fixed_eps))
    causes = list(dict.fromkeys(matching(actual, tol, hyps)))  # a sentence once, however many variants match
    if not causes:
        causes += _precision(actual, x, eps, dtype)
    return causes


FIXED_EPS = (1e-5, 1e-3, 1e-6, 1e-8, 1e-2, 1e-4, 1e-12, 1e-7)
"""eps values found written into public implementations' formulas (defaults of torch, Keras, JAX and tutorials)."""


def _precision(actual: np.ndarray, x: np.ndarray, eps: float, dtype: torch.dtype) -> list[str]:
    """No bug matched: NaN/inf from 16-bit sums, or cancellation when |mean|/std is large."""
    out = []
    axes = reduction_axes(x.ndim)
    mu = x.mean(axis=axes)
    var = ((x - per_channel(mu, x.ndim)) ** 2).mean(axis=axes)
    kappa = float(np.max(np.sqrt(mu**2 + var) / np.sqrt(var + eps)))
    bad = int(np.size(actual) - np.count_nonzero(np.isfinite(actual)))
    with np.errstate(over="ignore"):  # evidence: do this input's sums of squares overflow when kept in float16?
        overflows = dtype == torch.float16 and bool(
            np.any(np.isinf(np.sum(x.astype(np.float16) ** 2, axis=axes, dtype=np.float16))))
    if bad and overflows:
        out.append("NaN/inf with 16-bit input: sums or sums of squares kept in 16 bits overflow (float16 max 65504); "
                   "accumulate statistics in float32")
    elif bad:  # no hypothesis explains a NaN in full precision: say what was observed, guess nothing
        m = int(np.size(x) // x.shape[1])
        out.append(f"the target returned NaN/inf for {bad} of {np.size(actual)} values, for input of shape "
                   f"{tuple(x.shape)} ({m} values per channel) where the reference is finite everywhere")
    elif kappa > tols.CANCELLATION_KAPPA:
        out.append(f"the error grows with |mean|/std (here up to {kappa:.3g}): the variance is probably computed as "
                   "E[x^2] - E[x]^2 (catastrophic cancellation); compute it in two passes or with Welford's update")
    return out


def eval_output(
    actual: np.ndarray, x: np.ndarray, gamma: np.ndarray | None, beta: np.ndarray | None,
    rm: np.ndarray, rv: np.ndarray, eps: float, tol: Tolerance,
) -> list[str]:
    """An eval-mode output: batch statistics used, eps outside the square root, no square root, swapped affine."""
    g, b = affine(x, gamma, beta)
    mean = per_channel(rm, x.ndim)
    var = per_channel(rv, x.ndim)
    _axes, _m, mu, bvar = batch(x)
    hyps: list[Hypothesis] = [
        ("eval output matches the batch's own statistics: eval mode must use running_mean/running_var "
         "(is the module's training flag read?)", lambda: g * (x - mu) / np.sqrt(bvar + eps) + b),
        ("eval output matches (x - running_mean) / (sqrt(running_var) + eps): eps belongs inside the square root",
         lambda: g * (x - mean) / (np.sqrt(var) + eps) + b),
        ("eval output matches division by running_var + eps without the square root (running_var treated as a std)",
         lambda: g * (x - mean) / (var + eps) + b),
        ("eval output matches gamma and beta swapped", lambda: b * (x - mean) / np.sqrt(var + eps) + g),
        ("eval output matches (x - running_mean) / sqrt(running_var) without eps: the test-mode formula forgot eps "
         "(training has it)", lambda: g * (x - mean) / np.sqrt(var) + b),
        ("eval output matches the normalised input without gamma and beta: the test-mode branch does not apply the "
         "affine step (training does)", lambda: (x - mean) / np.sqrt(var + eps)),
        ("eval output matches running_var + 2 eps under the square root: eps is added twice (stored in the running "
         "variance, var + eps, and added again at test time)", lambda: g * (x - mean) / np.sqrt(var + 2 * eps) + b),
    ]
    hyps += channel_mixing(x, gamma, beta, eps, running=(rm, rv))
    return list(dict.fromkeys(matching(actual, tol, hyps)))


def channel_mixing(x: np.ndarray, gamma: np.ndarray | None, beta: np.ndarray | None, eps: float,
                   running: tuple[np.ndarray, np.ndarray] | None = None) -> list[Hypothesis]:
    """Spatial input flattened to ``(N*H*W, C)`` without moving the channel axis last: each column of the
    flattened array mixes channels and positions (``x.reshape(-1, C)``, or a transpose of the wrong axes).

    Each hypothesis normalises the columns of that array (with the batch's column statistics, or with
    ``running`` per column in eval) and maps the result back either by a plain reshape or by the
    correct channels-last inverse; one sentence per way of flattening.
    """
    if x.ndim < 3:
        return []
    n, c, spatial = x.shape[0], x.shape[1], x.shape[2:]
    dims = "(N, C, " + {1: "L", 2: "H, W", 3: "D, H, W"}.get(len(spatial), "...") + ")"
    last = (0, *range(2, x.ndim), 1)
    ins: list[tuple[str, tuple[int, ...]]] = [(
        f"the output matches {dims} input reshaped to (-1, C) without moving the channel axis last "
        f"(x.reshape(-1, C) instead of x.transpose{last}.reshape(-1, C)): each column mixes channels and "
        "positions; transpose channels last before the reshape, and back after", tuple(range(x.ndim)))]
    if x.ndim == 4:
        ins.append(("the output matches x.transpose(0, 1, 3, 2).reshape(-1, C): that transpose swaps H and W "
                    "instead of moving the channel axis last (0, 2, 3, 1), so each column mixes channels and positions",
                    (0, 1, 3, 2)))
    back = (0, x.ndim - 1, *range(1, x.ndim - 1))

    def normalised(perm: tuple[int, ...], channels_last_back: bool) -> np.ndarray:
        flat = np.transpose(x, perm).reshape(-1, c)
        if running is None:
            mu = flat.mean(axis=0)
            var = ((flat - mu) ** 2).mean(axis=0)
        else:
            mu, var = running
        out = (flat - mu) / np.sqrt(var + eps)
        if gamma is not None and beta is not None:
            out = gamma * out + beta
        if channels_last_back:
            return out.reshape((n, *spatial, c)).transpose(back)
        return out.reshape(np.transpose(x, perm).shape).transpose(np.argsort(perm))

    def variant(perm: tuple[int, ...], back_last: bool) -> Callable[[], np.ndarray]:
        return lambda: normalised(perm, back_last)

    return [(text, variant(perm, back_last)) for text, perm in ins for back_last in (False, True)]


def layout(layout: str) -> str:
    """A layout failure whose contiguous twin passes."""
    return ("the same values in a contiguous tensor pass, so the implementation ignores strides (reads storage as "
            f"if contiguous) for {layout} input")
