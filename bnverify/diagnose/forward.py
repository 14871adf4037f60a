"""Likely causes of a wrong forward output: training mode, eval mode, non-contiguous input."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from bnverify import tolerances as tols
from bnverify.compare import to_f64
from bnverify.diagnose.common import Hypothesis, batch, matching, observed
from bnverify.reference.batchnorm import affine, forward_train, per_channel, reduction_axes
from bnverify.tolerances import Tolerance


def train_output(
    actual: np.ndarray, x: np.ndarray, gamma: np.ndarray | None, beta: np.ndarray | None, eps: float,
    tol: Tolerance, dtype: torch.dtype, running: tuple[np.ndarray, np.ndarray] | None = None,
    wide: np.ndarray | None = None,
) -> list[str]:
    """A training-mode output: the known mistakes of normalisation, affine step and reduction axes.

    Only a hypothesis that reproduces ``actual`` within ``tol`` is named; with none, the list is empty
    (or, for NaN/inf, names what was observed).  ``wide`` is the target's output for the same values
    given in float32, for a 16-bit failure: NaN there too rules out 16-bit overflow.
    """
    _axes, m, mu, var = batch(x)
    g, b = affine(x, gamma, beta)
    hyps: list[Hypothesis] = [
        ("the output matches normalisation by the unbiased (m-1) variance; batch norm normalises with the "
         "biased variance (divide by m) and uses m/(m-1) only for the running estimate",
         lambda: g * (x - mu) / np.sqrt(var * m / (m - 1) + eps) + b),
        ("the output matches (x - mean) / (sqrt(var) + eps): eps belongs inside the square root, sqrt(var + eps)",
         lambda: g * (x - mu) / (np.sqrt(var) + eps) + b),
        (NO_EPS, lambda: g * (x - mu) / np.sqrt(var) + b),
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
    floor = _std_floor(actual, x, g, b, mu, var, eps)
    if floor is not None:
        hyps.append((f"the output matches the std clamped from below at {floor:g}, max(sqrt(var + eps), {floor:g}) (a floor "
                     "or clamp on the std): channels whose spread is below it are shrunk towards beta; eps is the only "
                     "constant batch norm's denominator may have",
                     lambda: g * (x - mu) / np.maximum(np.sqrt(var + eps), floor) + b))
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
    causes = _merge_eps_causes(causes, eps)
    if not causes:
        causes += _precision(actual, x, g, b, eps, tol, dtype, wide)
    return causes


NO_EPS = "the output matches normalisation without eps: sqrt(var + eps) is needed for near-constant channels"


def _merge_eps_causes(causes: list[str], eps: float) -> list[str]:
    """"Without eps" and "eps = e written into the code" in one sentence when both reproduce the output.

    Where every variance dwarfs both eps values the two are the same output within the tolerance, and
    naming either alone would claim more than the numbers show."""
    fixed = [c for c in causes if c.startswith("the output matches eps = ") and "everywhere, not the eps it was" in c]
    if NO_EPS not in causes or not fixed:
        return causes
    values = sorted((c[len("the output matches eps = "):].split(" ", 1)[0] for c in fixed), key=float, reverse=True)
    merged = (f"the output matches a denominator without the eps it was given ({eps:g}): normalisation without eps, "
              f"or eps = {' or '.join(values)} written into the code, reproduce it equally (this input's variances are "
              "too large to tell them apart; a check with variances near eps does)")
    return [merged if c == NO_EPS else c for c in causes if c not in fixed]


def _std_floor(actual: np.ndarray, x: np.ndarray, g: np.ndarray, b: np.ndarray, mu: np.ndarray, var: np.ndarray,
               eps: float) -> float | None:
    """The floor ``c`` of a denominator ``max(sqrt(var + eps), c)`` that the output implies, rounded to 2
    significant digits (floors are written as round numbers), or None.

    Each channel's denominator is read from its elements farthest from the mean, ``gamma (x - mean) /
    (y - beta)``; the channels whose denominator exceeds ``sqrt(var + eps)`` give ``c`` (their median).
    The value only proposes the hypothesis: ``train_output`` names it only if the output computed with
    it reproduces every value."""
    c = x.shape[1]
    with np.errstate(all="ignore"):
        implied = np.broadcast_to(g * (x - mu) / (actual - b), x.shape)
    dist = np.abs(x - mu)
    per_c = np.moveaxis(implied, 1, 0).reshape(c, -1)
    d_c = np.moveaxis(dist, 1, 0).reshape(c, -1)
    denoms = np.full(c, np.nan)
    for k in range(c):
        use = (d_c[k] >= 0.5 * d_c[k].max()) & (d_c[k] > 0) & np.isfinite(per_c[k]) & (per_c[k] > 0)
        if np.any(use):
            denoms[k] = float(np.median(per_c[k][use]))
    s = np.sqrt(var + eps).reshape(-1)
    clamped = np.isfinite(denoms) & (denoms > s * (1 + 1e-3))
    if not np.any(clamped):
        return None
    floor = float(np.median(denoms[clamped]))
    if not (math.isfinite(floor) and floor > 0):
        return None
    return float(f"{floor:.2g}")


FIXED_EPS = (1e-5, 1e-3, 1e-6, 1e-8, 1e-2, 1e-4, 1e-12, 1e-7)
"""eps values found written into public implementations' formulas (defaults of torch, Keras, JAX and tutorials)."""


def _precision(actual: np.ndarray, x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float, tol: Tolerance,
               dtype: torch.dtype, wide: np.ndarray | None) -> list[str]:
    """No bug matched: 16-bit overflow or one-pass cancellation where the numbers bear them out, else NaN/inf
    named as observed.  Nothing is attributed to a precision problem that its own simulation does not show."""
    bad = int(np.size(actual) - np.count_nonzero(np.isfinite(actual)))
    if bad and dtype == torch.float16 and _half_sums_reproduce(actual, x, g, b, eps, tol):
        if wide is not None and not np.all(np.isfinite(wide)):
            nw = int(np.size(wide) - np.count_nonzero(np.isfinite(wide)))
            return [f"the target returned NaN/inf for {bad} of {np.size(actual)} values of shape {tuple(x.shape)}, "
                    f"and for {nw} of them when the same values are given in float32, where nothing overflows: "
                    "16-bit overflow does not explain it"]
        return ["NaN/inf with 16-bit input: the output matches sums and sums of squares kept in float16, which "
                "overflow on this input (float16 max 65504); accumulate statistics in float32"]
    if bad:  # no hypothesis explains a NaN: say what was observed, guess nothing
        m = int(np.size(x) // x.shape[1])
        line = (f"the target returned NaN/inf for {bad} of {np.size(actual)} values, for input of shape "
                f"{tuple(x.shape)} ({m} values per channel) where the reference is finite everywhere")
        if wide is not None:
            nw = int(np.size(wide) - np.count_nonzero(np.isfinite(wide)))
            line += (f"; the same values in float32 give {nw} NaN/inf" + (", so 16-bit overflow does not explain it"
                                                                          if nw else ""))
        return [line]
    found = _one_pass_variance(actual, x, g, b, eps, dtype)
    return [found] if found else []


def _half_sums_reproduce(actual: np.ndarray, x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float,
                         tol: Tolerance) -> bool:
    """Does a batch norm whose sums stay in float16 give these NaN/inf (same places) and these finite values?"""
    axes = reduction_axes(x.ndim)
    m = x.size // x.shape[1]
    xs = torch.from_numpy(np.ascontiguousarray(x)).to(torch.float16)
    with np.errstate(all="ignore"):
        mean = xs.sum(dim=axes, keepdim=True) / m
        xmu = xs - mean
        var = (xmu * xmu).sum(dim=axes, keepdim=True) / m
        sim = (xmu.double() * torch.rsqrt(var.double() + eps)).numpy() * g + b
        sums = np.sum(x.astype(np.float64) ** 2, axis=axes)
    if not np.any(~np.isfinite(sim)) and not np.any(sums > float(np.finfo(np.float16).max)):
        return False
    if not np.array_equal(np.isfinite(sim), np.isfinite(actual)):
        return False
    fin = np.isfinite(sim)
    bound = np.broadcast_to(np.asarray(tol.bound, dtype=np.float64), sim.shape)
    return bool(np.all(np.abs(actual[fin] - sim[fin]) <= bound[fin] * tols.MATCH_SLACK))


def _one_pass_variance(actual: np.ndarray, x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float,
                       dtype: torch.dtype) -> str:
    """The error of ``E[x^2] - E[x]^2`` depends on rounding, so no single simulation reproduces it; what the
    output does pin down is the variance it was normalised with.  The hypothesis holds when that variance
    is off by more than a two-pass computation can be and by no more than one pass in ``dtype`` can:
    ``|var_t - var| <= ONE_PASS_ENVELOPE u E[x^2]`` (``u`` the unit roundoff of the statistics' dtype)."""
    axes = reduction_axes(x.ndim)
    mu = x.mean(axis=axes, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=axes, keepdims=True)
    ex2 = (x ** 2).mean(axis=axes, keepdims=True)
    with np.errstate(all="ignore"):
        xhat_t = (actual - b) / g
        d = np.abs(x - mu)
        use = (d >= 0.5 * d.max(axis=axes, keepdims=True)) & (d > 0) & np.isfinite(xhat_t) & (xhat_t != 0)
        implied = np.where(use, ((x - mu) / xhat_t) ** 2 - eps, np.nan)
    if not np.any(use):
        return ""
    var_t = np.nanmedian(implied.reshape(-1) if x.ndim == 1 else np.moveaxis(implied, 1, 0).reshape(x.shape[1], -1),
                         axis=-1)
    v = var.reshape(-1)
    e2 = ex2.reshape(-1)
    u = float(torch.finfo(torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype).eps) / 2
    err = np.abs(var_t - v)
    ok = np.isfinite(var_t)
    if not np.any(ok):
        return ""
    envelope = tols.ONE_PASS_ENVELOPE * u * e2
    two_pass = tols.ONE_PASS_ENVELOPE * u * v
    if not (np.all(err[ok] <= envelope[ok]) and np.any(err[ok] > two_pass[ok])):
        return ""
    c = int(np.argmax(np.where(ok, err / np.maximum(v + eps, 1e-300), -np.inf)))
    kappa = float(np.sqrt(e2[c] / (v[c] + eps)))
    return (f"the output implies a variance of {var_t[c]:.6g} for channel {c} where it is {v[c]:.6g}: off by "
            f"{err[c] / e2[c]:.3g} x E[x^2], within what E[x^2] - E[x]^2 loses in "
            f"{str(dtype).replace('torch.', '')} (up to {tols.ONE_PASS_ENVELOPE:g} u E[x^2]) at |mean|/std "
            f"{kappa:.3g}, and beyond what a two-pass variance loses: compute it in two passes or with Welford's "
            "update")


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
    """A layout failure whose contiguous twin passes: what was observed (``layout_output`` tests the
    storage read as if contiguous)."""
    return observed(f"the same values in a contiguous tensor pass, so the result depends on the memory layout of "
                    f"{layout} input")


def layout_output(actual: np.ndarray, xt: torch.Tensor, gamma: np.ndarray | None, beta: np.ndarray | None,
                  eps: float, tol: Tolerance, layout: str) -> list[str]:
    """A wrong output for the non-contiguous tensor ``xt`` (whose contiguous twin passes): does it equal
    the batch norm of ``xt``'s storage read with contiguous offsets from its storage offset, as a
    kernel that takes the data pointer and ignores the strides reads it?"""
    shape = tuple(xt.shape)
    strides: list[int] = []
    step = 1
    for n in reversed(shape):
        strides.insert(0, step)
        step *= max(int(n), 1)
    src = xt.detach().cpu()
    if src.untyped_storage().nbytes() < (src.storage_offset() + step) * src.element_size():
        return []
    misread = to_f64(src.as_strided(shape, tuple(strides), src.storage_offset()))

    def read_as_contiguous() -> np.ndarray:
        return forward_train(misread, gamma, beta, eps)[0]

    return matching(actual, tol, [(f"the output matches the {layout} input's storage read with contiguous (N, C, ...) "
                                   "offsets: the implementation ignores the strides (a data pointer indexed as if "
                                   "contiguous); call .contiguous() first or index with x.stride()",
                                   read_as_contiguous)])
