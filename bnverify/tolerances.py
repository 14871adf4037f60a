"""Every tolerance bnverify applies, derived in one place.

The oracle is the float64 reference evaluated on exactly the values the
target received (its dtype's values, upcast).  For float32 and 16-bit
targets it is exact by comparison; for float64 targets its own rounding is
as large as the target's, so every ``u`` below is the target's plus float64's
(``ORACLE_U``): the bound covers target and oracle together.  The bounds
below are first-order rounding-error bounds (Higham, *Accuracy and Stability
of Numerical Algorithms*, ch. 3-4) for a plain two-pass implementation that
computes in the *compute dtype*, multiplied by one safety factor ``SAFETY``.

Notation, per channel ``c`` with ``m`` values per channel:

* ``u``      unit roundoff of the compute dtype: float64 2^-53, float32 2^-24;
  16-bit inputs are computed in float32 (the convention of torch's kernels
  and of ``native_batch_norm_helper``), so their ``u`` is float32's.
* ``u_out``  unit roundoff of the output dtype (float16 2^-11, bfloat16 2^-8):
  the final rounding of each output element.
* ``g(m)``   growth of a sum of ``m`` terms: ``log2(m) + sqrt(m)``.  Pairwise
  and tree reductions (torch, numpy, GPU block reductions) are bounded by
  ``log2(m) u sum|x|``; sequential accumulation by ``(m-1) u sum|x|`` in the
  worst case but, with independent rounding errors, by ``lambda sqrt(m) u
  sum|x|`` with probability ``1 - 2 exp(-lambda^2/2)`` (Higham & Mary 2019).
  With ``SAFETY = 4`` the sqrt term has ``lambda = 4``: a failure probability
  below 1e-3 per sum *if the bound were tight*, and it is not (it uses
  ``sum|x|``, not the actual error).
* ``sigma``  ``sqrt(var + eps)`` of the batch (train) or of the running
  variance (eval);  ``xhat`` the normalised input.
* ``kappa``  conditioning of the channel: ``rms(x) / sigma`` = ``sqrt(mean^2 +
  var) / sqrt(var + eps)``.  The mean is computed to ``g u rms(x)`` absolute,
  which is ``g u kappa`` in output units: large ``|mean|/std`` is where every
  implementation loses digits, and this is the honest allowance for it.

Forward (training), per element::

    tol = SAFETY * ( |gamma| (u g (kappa + |xhat|) + u_out (|x|/sigma + 2)) + u_out (|gamma xhat| + |beta|) )

* ``g kappa``: error of the mean, divided by sigma;
* ``g |xhat|``: relative error of the two-pass variance (``2 g u``, halved by the sqrt);
* ``|x|/sigma``: rounding of ``x - mean``;  ``2``: the rsqrt and the scaling.  These
  elementwise steps are allowed the data dtype's ``u_out``: torch's own CPU
  kernels do them in 16 bits for 16-bit data, and only the reductions need
  float32 (for float32/float64 data ``u_out = u``).

This bound separates the implementations SPEC section 5 names: a two-pass
float32 implementation stays below it (measured margin in
``tests/test_tolerances.py``), while ``E[x^2] - E[x]^2`` has a variance error of
``g u kappa^2`` relative, i.e. an output error ``~ kappa/(2 SAFETY)`` times the
bound, and normalising with the ``m-1`` estimator is off by ``|xhat|/(2m)``,
above the bound for every ``m`` the suites draw in float64 and for
``m < ~1e3`` in float32.

Backward (training), with ``dy`` the upstream gradient::

    d_xhat     = u g (1 + kappa) + u_out (1 + max|x|/sigma)            (error of xhat, per channel)
    tol_dx     = SAFETY * ( |gamma|/sigma ((d_xhat + u g)(1+|xhat|) rms(dy) + u_out |dy|) + u_out |dx| )
    tol_dgamma = SAFETY * ( u g sum|dy xhat| + d_xhat sum|dy| + u_out |dgamma| )
    tol_dbeta  = SAFETY * ( u g sum|dy| + u_out |dbeta| )

* the two reductions ``mean(dy)`` and ``mean(dy xhat)`` each carry ``g u``;
* ``xhat`` itself carries the forward's error ``d_xhat``, which enters
  ``dx`` through ``xhat mean(dy xhat)`` and ``dgamma`` through ``sum dy xhat``.

Eval has no reduction in the forward pass: ``tol = SAFETY (|gamma| u (|x| +
|mean|)/sigma + 2 |gamma xhat| u + u_out (|gamma xhat| + |beta|))``.

Every bound also gets an absolute floor of ``SAFETY`` times the smallest
subnormal of the output dtype, so exact zeros compare sanely.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from bnverify.reference.batchnorm import affine, per_channel, reduction_axes

SAFETY = 4.0

_UNIT_ROUNDOFF = {
    torch.float64: 2.0**-53,
    torch.float32: 2.0**-24,
    torch.float16: 2.0**-11,
    torch.bfloat16: 2.0**-8,
}


ORACLE_U = 2.0**-53
"""The oracle's own unit roundoff: it computes in float64, so for float64 targets its rounding
is as large as the target's and both are allowed (the bound is for target + oracle)."""


def unit_roundoff(dtype: torch.dtype) -> float:
    """Half the machine epsilon of a floating dtype."""
    try:
        return _UNIT_ROUNDOFF[dtype]
    except KeyError:
        raise TypeError(f"no unit roundoff for dtype {dtype}") from None


def _us(dtype: torch.dtype) -> tuple[float, float]:
    """(u, u_out) for a target of ``dtype``, each plus the oracle's own float64 rounding."""
    return unit_roundoff(compute_dtype(dtype)) + ORACLE_U, unit_roundoff(dtype) + ORACLE_U


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics of 16-bit inputs are held to float32 accuracy."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def growth(m: int) -> float:
    """``g(m) = log2(m) + sqrt(m)``: error growth of an ``m``-term reduction."""
    m = max(int(m), 1)
    return math.log2(m) + math.sqrt(m)


def _floor(dtype: torch.dtype) -> float:
    return SAFETY * float(torch.finfo(dtype).smallest_normal) * unit_roundoff(dtype)


@dataclass(frozen=True)
class Tolerance:
    """An elementwise bound and the sentence that explains it in a failure message."""

    bound: np.ndarray
    explanation: str


def _describe(dtype: torch.dtype, m: int, kappa: np.ndarray, kind: str) -> str:
    u = unit_roundoff(compute_dtype(dtype))
    k = float(np.max(kappa)) if np.size(kappa) else 1.0
    out = f", output rounded to {str(dtype).replace('torch.', '')} (u_out={unit_roundoff(dtype):.1e})" if dtype != compute_dtype(dtype) else ""
    return (
        f"{kind} bound for a two-pass implementation in {str(compute_dtype(dtype)).replace('torch.', '')}: "
        f"u={u:.1e}, m={m} values per channel (g(m)={growth(m):.1f}), "
        f"conditioning kappa=rms(x)/sqrt(var+eps) up to {k:.3g}{out}, safety x{SAFETY:g} "
        f"(derivation: bnverify.tolerances)"
    )


def _channel_stats(x: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    axes = reduction_axes(x.ndim)
    m = x.size // x.shape[1]
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    sigma = np.sqrt(var + eps)
    kappa = np.sqrt(mean**2 + var) / sigma
    return mean, sigma, kappa, m


def _normalised(x: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, np.ndarray]:
    """``(mean, sigma, kappa, m, xhat)`` of float64 ``x`` with batch statistics."""
    mean, sigma, kappa, m = _channel_stats(x, eps)
    return mean, sigma, kappa, m, (x - mean) / sigma


def _abs_affine(x: np.ndarray, gamma: np.ndarray | None, beta: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """``|gamma|``, ``|beta|`` broadcastable against ``x`` (1 and 0 without affine)."""
    g, b = affine(x, gamma, beta)
    return np.abs(g), np.abs(b)


def forward_train(
    x: np.ndarray, gamma: np.ndarray | None, beta: np.ndarray | None, eps: float, dtype: torch.dtype
) -> Tolerance:
    """Elementwise bound on a training-mode output (see the module docstring)."""
    x = np.asarray(x, dtype=np.float64)
    mean, sigma, kappa, m, xhat = _normalised(x, eps)
    g_, b_ = _abs_affine(x, gamma, beta)
    u, uo = _us(dtype)
    gm = growth(m)
    bound = SAFETY * (
        g_ * (u * gm * (kappa + np.abs(xhat)) + uo * (np.abs(x) / sigma + 2.0))
        + uo * (g_ * np.abs(xhat) + b_)
    ) + _floor(dtype)
    return Tolerance(bound, _describe(dtype, m, kappa, "forward"))


def forward_eval(
    x: np.ndarray,
    gamma: np.ndarray | None,
    beta: np.ndarray | None,
    running_mean: np.ndarray,
    running_var: np.ndarray,
    eps: float,
    dtype: torch.dtype,
) -> Tolerance:
    """Elementwise bound on an eval-mode output: no reduction, only elementwise rounding."""
    x = np.asarray(x, dtype=np.float64)
    nd = x.ndim
    mean = per_channel(running_mean, nd)
    sigma = np.sqrt(per_channel(running_var, nd) + eps)
    xhat = (x - mean) / sigma
    g_, b_ = _abs_affine(x, gamma, beta)
    u, uo = _us(dtype)
    bound = SAFETY * (
        g_ * u * ((np.abs(x) + np.abs(mean)) / sigma + 2.0 * np.abs(xhat) + 1.0)
        + uo * (g_ * np.abs(xhat) + b_)
    ) + _floor(dtype)
    m = x.size // max(x.shape[1], 1)
    kappa = (np.abs(x) + np.abs(mean)) / sigma
    return Tolerance(bound, _describe(dtype, m, kappa, "eval forward (no reduction)").replace(
        "two-pass implementation", "elementwise implementation"))


@dataclass(frozen=True)
class BackwardTolerance:
    dx: Tolerance
    dgamma: Tolerance
    dbeta: Tolerance


def backward_train(
    x: np.ndarray, dy: np.ndarray, gamma: np.ndarray | None, eps: float, dtype: torch.dtype,
    dx_ref: np.ndarray, dgamma_ref: np.ndarray, dbeta_ref: np.ndarray,
) -> BackwardTolerance:
    """Bounds on ``dx`` (elementwise), ``dgamma`` and ``dbeta`` (per channel) in training mode."""
    x = np.asarray(x, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    nd = x.ndim
    axes = reduction_axes(nd)
    mean, sigma, kappa, m, xhat = _normalised(x, eps)
    g_, _ = _abs_affine(x, gamma, None)
    u, uo = _us(dtype)
    gm = growth(m)
    rms_dy = np.sqrt((dy**2).mean(axis=axes, keepdims=True))
    fl = _floor(dtype)
    # error of xhat itself: the mean's (g u kappa) and the elementwise (x - mean) in the data dtype
    kx = (np.abs(x) / sigma).max(axis=axes, keepdims=True)
    dxhat = u * gm * (1 + kappa) + uo * (1 + kx)
    dx_b = SAFETY * (
        g_ / sigma * ((dxhat + u * gm) * (1 + np.abs(xhat)) * rms_dy + uo * np.abs(dy))
        + uo * np.abs(dx_ref)
    ) + fl
    sum_abs_dy = np.abs(dy).sum(axis=axes)
    sum_abs_dyx = np.abs(dy * xhat).sum(axis=axes)
    dg_b = SAFETY * (u * gm * sum_abs_dyx + dxhat.reshape(-1) * sum_abs_dy + uo * np.abs(dgamma_ref)) + fl
    db_b = SAFETY * (u * gm * sum_abs_dy + uo * np.abs(dbeta_ref)) + fl
    text = _describe(dtype, m, kappa, "backward")
    return BackwardTolerance(Tolerance(dx_b, text), Tolerance(dg_b, text), Tolerance(db_b, text))


def backward_eval(
    x: np.ndarray, dy: np.ndarray, gamma: np.ndarray | None, running_mean: np.ndarray,
    running_var: np.ndarray, eps: float, dtype: torch.dtype,
    dx_ref: np.ndarray, dgamma_ref: np.ndarray, dbeta_ref: np.ndarray,
) -> BackwardTolerance:
    """Bounds for eval-mode gradients: ``dx = gamma/sigma dy`` elementwise, sums for the parameters."""
    x = np.asarray(x, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    nd = x.ndim
    axes = reduction_axes(nd)
    m = x.size // x.shape[1]
    mean = per_channel(running_mean, nd)
    sigma = np.sqrt(per_channel(running_var, nd) + eps)
    xhat = (x - mean) / sigma
    g_, _ = _abs_affine(x, gamma, None)
    u, uo = _us(dtype)
    gm = growth(m)
    fl = _floor(dtype)
    elem = (np.abs(x) + np.abs(mean)) / sigma + np.abs(xhat)
    dx_b = SAFETY * (3 * u * g_ / sigma * np.abs(dy) + uo * np.abs(dx_ref)) + fl
    dg_b = SAFETY * (u * gm * np.abs(dy * xhat).sum(axis=axes) + u * (np.abs(dy) * elem).sum(axis=axes)
                     + uo * np.abs(dgamma_ref)) + fl
    db_b = SAFETY * (u * gm * np.abs(dy).sum(axis=axes) + uo * np.abs(dbeta_ref)) + fl
    text = _describe(dtype, m, np.ones(1), "eval backward")
    return BackwardTolerance(Tolerance(dx_b, text), Tolerance(dg_b, text), Tolerance(db_b, text))


# Tolerances of checks that are not comparisons to the oracle.
GRADCHECK = {"eps": 1e-6, "atol": 1e-5, "rtol": 1e-3}
"""float64 finite differences, torch.autograd.gradcheck's defaults (designed for double precision)."""


# --------------------------------------------------------------------------- modes suite (running statistics)
#
# Running statistics after k training steps (``bnverify.modes``).  One step with new-batch weight ``w``:
#
#     r_mean' = (1-w) r_mean + w mu_B          r_var' = (1-w) r_var + w f sigma_B^2,   f = m/(m-1) or 1
#
# * ``mu_B`` is a reduction of ``m`` values: error ``u g(m) rms(x)`` (``rms(x) = sqrt(mu_B^2 + sigma_B^2)``),
#   as in the forward bound above.
# * the two-pass ``sigma_B^2`` has relative error ``~ g(m) u`` from the sum of squares, and the rounded
#   deviations ``x - mu`` add ``u |x| |x - mu|`` per term, i.e. ``u sigma_B rms(x)`` in all:
#   ``d_var = f u g(m) (sigma_B^2 + sigma_B rms(x)) + u_out f sigma_B^2`` (the last term: the factor ``f``).
#   A one-pass ``E[x^2] - E[x]^2`` has ``u g(m) rms(x)^2``, ``kappa`` times more, and fails for large means.
# * the blend itself is three roundings in the buffer dtype: ``u_out (|(1-w) r| + |w b| + |r'|)``.
# * an earlier step's error is carried with weight ``|1-w| <= 1``.
#
# Each new term is multiplied by ``SAFETY``; the carried bound is not multiplied again.  The two estimators
# differ by ``sigma_B^2 / (m-1)`` and the two momentum meanings by ``|1-2w| |r - b|``: for the sizes the
# suite draws (``m <= ~1500``) and ``w`` away from 1/2 both are orders of magnitude above this bound, so
# the checks tell the conventions apart rather than blur them.

def running_update(
    x: np.ndarray, rm: np.ndarray, rv: np.ndarray, w: float, unbiased: bool, dtype: torch.dtype,
    mean_bound: np.ndarray, var_bound: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Bounds on ``(running_mean, running_var)`` after one more update (see the comment above)."""
    from bnverify.reference.batchnorm import batch_stats

    mu, var, m = batch_stats(x)
    f = m / (m - 1) if (unbiased and m > 1) else 1.0
    u, uo = _us(dtype)
    gm = growth(m)
    sigma = np.sqrt(var)
    rms = np.sqrt(mu**2 + var)
    d_mean = u * gm * rms
    d_var = f * u * gm * (var + sigma * rms) + uo * f * var
    new_m = (1 - w) * np.asarray(rm, np.float64) + w * mu
    new_v = (1 - w) * np.asarray(rv, np.float64) + w * f * var
    blend_m = uo * (np.abs((1 - w) * rm) + np.abs(w * mu) + np.abs(new_m))
    blend_v = uo * (np.abs((1 - w) * rv) + np.abs(w * f * var) + np.abs(new_v))
    fl = _floor(dtype)
    bm = abs(1 - w) * mean_bound + SAFETY * (abs(w) * d_mean + blend_m) + fl
    bv = abs(1 - w) * var_bound + SAFETY * (abs(w) * d_var + blend_v) + fl
    return bm, bv


def folded_layer(
    z: np.ndarray, z_exact: np.ndarray, gamma: np.ndarray | None, beta: np.ndarray | None,
    running_mean: np.ndarray, running_var: np.ndarray, eps: float, dtype: torch.dtype,
) -> Tolerance:
    """Eval output of ``layer -> BN`` vs the folded layer applied in float64.

    The target sees ``z`` (the layer output rounded to its dtype); the folded layer computes with the
    exact ``z_exact``.  So the bound is the eval bound on ``z`` plus the exactly known difference
    ``|scale| |z - z_exact|`` (``scale = gamma / sqrt(Var + eps)``) plus float64 rounding of the folded
    layer (``SAFETY * 64 * ORACLE_U * |y|``, a generous count of the float64 operations in a dot product
    of at most 81 terms).
    """
    base = forward_eval(z, gamma, beta, running_mean, running_var, eps, dtype)
    nd = z.ndim
    g = per_channel(np.ones(z.shape[1]) if gamma is None else gamma, nd)
    scale = np.abs(g) / np.sqrt(per_channel(running_var, nd) + eps)
    y = g * (z - per_channel(running_mean, nd)) / np.sqrt(per_channel(running_var, nd) + eps)
    extra = scale * np.abs(z - z_exact) * (1 + 1e-6) + SAFETY * 64 * ORACLE_U * (np.abs(y) + 1.0)
    return Tolerance(base.bound + extra, base.explanation + "; plus the rounding of the layer output to the target "
                     "dtype times gamma/sqrt(Var+eps)")


DEFAULT_EPS_RTOL = 1e-3
"""Relative tolerance on a *measured* default eps (``bnverify.fingerprint.probe_defaults``): the probe
reads ``eps = (x / y)^2`` from an eval output with ``running_var = 0``, whose float32 rounding is a few
``u = 6e-8`` relative; the frameworks' defaults differ by 100x (1e-5 vs 1e-3), and a wrong default is
never within 0.1%."""

DEFAULT_MOMENTUM_ATOL = 1e-3
"""Absolute tolerance on a *measured* new-batch weight of the default momentum: one training step from
running mean 0 gives ``w mu_B`` with ``mu_B`` of order 1, measured to a few float32 ulps; the
conventions' weights (0.1, 0.01) differ by 0.09."""


# =========================================================================== invariance (suite `invariance`)
#
# The invariance checks compare the target with *itself* (at two scales, two
# shifts, two batch orders), not with the oracle.  Two kinds of bound follow.
#
# Exact properties, a power of two ``a = +-2^k``: ``a x`` is exact in binary
# floating point, and so is ``eps a^2``.  Every correctly rounded operation
# (+, -, *, /, sqrt) commutes with scaling by a power of two while no
# intermediate leaves the normal range (the suites keep ``k`` inside it), and
# the order of a reduction does not depend on the values.  So a correct
# implementation gives ``BN(a x; eps a^2) = sign(a) (BN(x; eps) - beta) + beta``
# *bit for bit*, and its backward ``dx(a x) = dx(x) / a`` bit for bit.  What is
# not exact: an approximate elementwise function (a hardware rsqrt, a
# vectorised sqrt with a few ulps of error) may round its scaled argument
# differently.  ``EXACT_ULPS`` ulps of the compute dtype are allowed on each
# term that such a function touches, relative to the term's own size:
#
#     tol_y  = SAFETY * EXACT_ULPS * u * (|gamma xhat| + |beta|)
#     tol_dx = SAFETY * EXACT_ULPS * u * |gamma|/sigma (|dy| + |mean dy| + |xhat| (1 + mean|dy xhat|))
#
# A bug that makes the result depend on the magnitude (a floor, clamp or
# threshold on the variance or the std, fixed-point accumulation, an overflow
# guard) shows up as a difference of whole percent against these ulp-sized
# bounds.  Gradients through a preceding layer (u -> z = layer(u, W)) are
# formed by the harness in float64 from the target's dz; ``tol_dx`` is carried
# through the layer's backward with absolute values (|dz - dz'| @ |W| and
# |dz - dz'|^T @ |u|), plus float64's rounding of that product.
#
# Inexact properties (eps held fixed with a = 10^s, a per-channel shift b, a
# permuted batch) hold in exact arithmetic only up to a known amount, and the
# target's rounding differs between the two evaluations.  With ``r`` the
# float64 oracle on exactly the values each evaluation received and
# ``tol_fwd`` the forward bound above (which grows with |mean|/std, so large
# shifts get the allowance that cancellation needs), the triangle inequality
# gives
#
#     |t(x') - t(x) - (r(x') - r(x))| <= tol_fwd(x') + tol_fwd(x)
#
# where ``r(x') - r(x)`` is the exact effect of eps not being scaled (zero
# for a shift or a permutation, up to float64 rounding, which ``ORACLE_U`` in
# ``tol_fwd`` covers).  Negative powers of two are exact except for the affine
# step, see ``scale_negative_forward``.  Gradients use ``backward_train``'s bounds the same way.

EXACT_ULPS = 4.0
"""Ulps of the compute dtype allowed per term for an approximate elementwise function (see above)."""

FIXED_EPS_MIN_RATIO = 10.0
"""Scale-invariance with eps held fixed is checked only where a^2 var >= this * eps ("far above")."""


def scale_window(dtype: torch.dtype) -> tuple[float, float]:
    """Range of ``a^2 (var + eps)`` over which the exact scale checks run: ``[max^-1/2, max^1/2]`` of the dtype.

    A plain implementation differentiated by autograd forms ``(var + eps)^(-3/2)``
    (the derivative of rsqrt) and multiplies it by sums of ``m`` products;
    inside this window that power stays within ``max^(3/4)`` of 1, which leaves
    ``max^(1/4)`` (float32: 4e9, float64: 1e77) of headroom for the products
    before anything overflows or becomes subnormal.  Outside it a correct
    autograd implementation may return inf/NaN, which is a range limit of the
    dtype and not a broken invariance.  float32: [5e-20, 2e19]; float64:
    [7e-155, 1e154].
    """
    big = float(torch.finfo(dtype).max)
    return big**-0.5, big**0.5


def _exact_u(dtype: torch.dtype) -> float:
    return SAFETY * EXACT_ULPS * unit_roundoff(compute_dtype(dtype))


def scale_exact_forward(
    x: np.ndarray, gamma: np.ndarray | None, beta: np.ndarray | None, eps: float, dtype: torch.dtype
) -> Tolerance:
    """Bound on ``|t(a x; eps a^2) - sign(a) (t(x; eps) - beta) - beta|`` for a power of two ``a``."""
    x = np.asarray(x, dtype=np.float64)
    mean, sigma, _kappa, m, xhat = _normalised(x, eps)
    g_, b_ = _abs_affine(x, gamma, beta)
    bound = _exact_u(dtype) * (g_ * np.abs(xhat) + b_) + _floor(dtype)
    return Tolerance(bound, _exact_text(dtype, m))


def scale_negative_forward(
    x: np.ndarray, gamma: np.ndarray | None, beta: np.ndarray | None, eps: float, dtype: torch.dtype
) -> Tolerance:
    """Bound for ``a = -2^k``: the exact-scaling bound plus the affine step's rounding, which negation does not commute with.

    An implementation may fold the affine step into ``y = x s + (beta - mean s)``
    with ``s = gamma / sigma``.  Negating ``x`` negates ``x s`` and ``mean s``
    but not ``beta``, so the additions round differently in the two
    evaluations: each is within ``u_out (|x s| + |mean s| + |beta|)`` of
    exact, hence twice that between them (``SAFETY`` as everywhere).
    """
    base = scale_exact_forward(x, gamma, beta, eps, dtype)
    x = np.asarray(x, dtype=np.float64)
    mean, sigma, _kappa, _m = _channel_stats(x, eps)
    g_, b_ = _abs_affine(x, gamma, beta)
    _, uo = _us(dtype)
    bound = base.bound + 2 * SAFETY * uo * (g_ * (np.abs(x) + np.abs(mean)) / sigma + b_)
    return Tolerance(bound, base.explanation.replace(
        "exact-scaling bound", "negative-scaling bound (exact up to the affine step's rounding, which does not "
        "commute with negation when beta != 0)"))


def scale_exact_dx(
    x: np.ndarray, dy: np.ndarray, gamma: np.ndarray | None, eps: float, dtype: torch.dtype
) -> np.ndarray:
    """Elementwise bound on ``|a dx(a x; eps a^2) - dx(x; eps)|`` for a power of two ``a`` (unscaled units)."""
    x = np.asarray(x, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    nd = x.ndim
    axes = reduction_axes(nd)
    mean, sigma, _kappa, _m, xhat = _normalised(x, eps)
    g_, _ = _abs_affine(x, gamma, None)
    mdy = np.abs(dy.mean(axis=axes, keepdims=True))
    mdyx = np.abs(dy * xhat).mean(axis=axes, keepdims=True)
    return _exact_u(dtype) * g_ / sigma * (np.abs(dy) + mdy + np.abs(xhat) * (1 + mdyx)) + _floor(dtype)


def layer_product_rounding(n_terms: int) -> float:
    """Relative rounding of the harness's float64 ``dz @ W`` / ``dz^T @ u`` (a ``n_terms`` reduction)."""
    return SAFETY * ORACLE_U * growth(n_terms)


def _exact_text(dtype: torch.dtype, m: int) -> str:
    return (
        f"exact-scaling bound: a power-of-two scale commutes with every correctly rounded op, so a correct "
        f"target is equal bit for bit; {EXACT_ULPS:g} ulps x safety {SAFETY:g} of "
        f"{str(compute_dtype(dtype)).replace('torch.', '')} (u={unit_roundoff(compute_dtype(dtype)):.1e}) allowed "
        f"for approximate elementwise functions, m={m} values per channel (derivation: bnverify.tolerances)"
    )


def triangle(tol_a: Tolerance, tol_b: Tolerance, what: str) -> Tolerance:
    """``tol_a + tol_b``: bound on ``|t(x') - t(x) - (r(x') - r(x))|``, each evaluation within its own bound of its oracle."""
    bound = tol_a.bound + tol_b.bound
    return Tolerance(bound, f"{what}: the change of the target's output is compared with the exact float64 change "
                            f"of the reference, allowing both evaluations' bounds (triangle inequality); each is a "
                            f"{tol_a.explanation}")


def sum_of_bounds(bound: np.ndarray, values: np.ndarray, axes: tuple[int, ...], weight: np.ndarray | None = None) -> np.ndarray:
    """Bound on ``|sum (w v') - sum (w v)|`` over ``axes`` when ``|v' - v| <= bound``, plus float64 rounding."""
    w = np.ones_like(values) if weight is None else np.abs(weight)
    n = int(np.prod([values.shape[a] for a in axes]))
    return (w * bound).sum(axis=axes) + SAFETY * ORACLE_U * growth(n) * np.abs(w * values).sum(axis=axes)


def running_permutation(x: np.ndarray, dtype: torch.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Bounds on the running mean and variance after one training step, between two orders of one batch.

    Each is ``momentum`` (< 1) times the batch statistic (the variance maybe
    times ``m/(m-1) <= 2``) plus the kept old value, so the difference is at
    most twice (two evaluations) the error of the batch mean, ``u g rms(x)``,
    and of the two-pass variance, ``u g (var + 2 std rms(x))``, times 2, plus
    the rounding of the update itself.
    """
    x = np.asarray(x, dtype=np.float64)
    axes = reduction_axes(x.ndim)
    m = x.size // x.shape[1]
    u, _ = _us(dtype)
    gm = growth(m)
    mean = x.mean(axis=axes)
    var = x.var(axis=axes)
    rms = np.sqrt(mean**2 + var)
    fl = _floor(dtype)
    tm = 2 * SAFETY * (u * gm * rms + 2 * u * (np.abs(mean) + 1)) + fl
    tv = 2 * SAFETY * (2 * u * gm * (var + 2 * np.sqrt(var) * rms) + 2 * u * (2 * var + 1)) + fl
    return tm, tv


# --------------------------------------------------------------------------- dropout suite
DROPOUT_N = 100_000
"""Elements per statistical dropout test: the drop count is Binomial(n, p), sd <= 158 at p = 0.5."""

DROPOUT_Z = 5.0
"""Two-sided z bound for the binomial tests of ``suites/test_dropout.py`` (drop rate, mask overlap p^2):
a correct implementation exceeds it with probability 5.7e-7 per test (normal approximation, n p (1-p)
>= 900 for the p the suite uses), while p swapped for 1-p at p=0.1 is off by 0.8 n = 80000, ~300 sd,
and identical masks overlap at rate p instead of p^2, ~200 sd at p=0.5."""


def dropout_train_bound(expected: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """A kept element ``x * scale``: one rounding of the scale and one of the product, times ``SAFETY``."""
    return SAFETY * 2 * unit_roundoff(dtype) * np.abs(expected)


def dropout_eval_bound(expected: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """Eval dropout, ``x`` or ``(1 - p) x``: at most one rounding, times ``SAFETY``."""
    return SAFETY * unit_roundoff(dtype) * np.abs(expected)


DROPOUT_SCALE_MATCH = 1e-4
"""Relative distance at which the median scale of kept elements is said to *be* 1, 1/(1-p) or 1/p in a
likely cause: the three differ by at least 11% for the p the suite uses, and the median of 20,000
ratios of one rounding each is exact to far better than 1e-4."""



# --------------------------------------------------------------------------- optimizer suite (`optim`)
# Optimizer steps are compared in lockstep (``bnverify.optim_check``): before every step the reference
# gets the target's own parameters and exactly the gradients the target received, and keeps its own
# state.  Parameter errors therefore never feed back through the loss, and what remains is rounding,
# bounded per element as a running error bound (Higham ch. 3, "running error analysis") propagated
# through the reference's own update function:
#
# * the inputs of one step carry rounding the target is allowed: the gradient after weight decay,
#   ``g + c lambda theta`` (``c`` = 1 or 2), to ``OPTIM_STATE_OPS u (|g| + 2 lambda |theta|)``; each state
#   entry to ``acc + OPTIM_STATE_OPS u |s|``, ``acc`` being its bound from earlier steps;
# * their effect is measured, not modelled: the reference step is evaluated with each input moved by
#   its bound, up and down (state entries that are non-negative by construction are not moved below
#   0), and the largest change of the new parameter and of each new state entry is taken, summed over
#   the inputs.  This is first-order propagation of the bounds through the exact update; it carries
#   the contraction of the moving averages (old errors times beta), cross terms (a square average
#   inside a momentum buffer, the maximum of amsgrad) and cancellation (centred RMSprop's ``u - g_bar^2``,
#   Nesterov's ``g + mu b``) without a formula per optimizer;
# * each step adds ``OPTIM_STATE_OPS u |s_new|`` to a state entry (the final sum and its storage) and
#   ``OPTIM_UPDATE_OPS u |Delta| + 2 u (|theta_old| + |theta_new|)`` to a parameter (the roundings of
#   the update ``Delta`` after its inputs: bias corrections, square root, eps, division, learning
#   rate; then the decoupled decay and the subtraction).
#
# ``u`` is the unit roundoff of the parameters' dtype plus the oracle's ``ORACLE_U``; the sum is
# multiplied by ``SAFETY``.  Ops are counted for the longest form (torch's Adam: ``lerp`` = subtract,
# multiply, add; ``mul_``/``addcmul_`` = 3; ``sqrt``, ``/ bias_correction2_sqrt``, ``+ eps``,
# ``addcdiv`` = 3, ``lr / bias_correction1``), rounded up.  A convention difference is far above these
# bounds: eps inside vs outside the root with ``eps`` 1e-2 of ``sqrt(v)`` changes the update by ~1%,
# bias correction by up to ``1/(1 - beta1) = 10x``, while the bounds are ~1e-14 relative in float64 and
# ~1e-5 in float32 over the suite's 12-25 steps.
OPTIM_STATE_OPS = 6
"""Roundings per state entry per step (torch's lerp/mul/addcmul forms: at most 5, plus the stored value)."""

OPTIM_UPDATE_OPS = 10
"""Roundings of the update after its inputs (torch's Adam: 8), plus one each for decoupled decay and lr."""


def optim_input_bounds(grad: np.ndarray, param: np.ndarray, weight_decay: float, dtype: torch.dtype) -> np.ndarray:
    """How far the target's effective gradient ``g + c lambda theta`` may be from the exact one."""
    u = unit_roundoff(dtype) + ORACLE_U
    return OPTIM_STATE_OPS * u * (np.abs(grad) + 2 * abs(weight_decay) * np.abs(param))


def optim_state_rounding(state_value: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """Rounding of one state entry within one step: its own storage and the final sum."""
    return OPTIM_STATE_OPS * (unit_roundoff(dtype) + ORACLE_U) * np.abs(state_value)


def optim_param_bound(propagated: np.ndarray, old: np.ndarray, new: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """The bound on a parameter after one step: propagated input bounds plus this step's roundings, x SAFETY."""
    u = unit_roundoff(dtype) + ORACLE_U
    step = OPTIM_UPDATE_OPS * u * np.abs(new - old) + 2 * u * (np.abs(old) + np.abs(new))
    return SAFETY * (propagated + step) + _floor(dtype)


def optim_state_bound(acc: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """The bound on a state entry: its running bound ``acc`` x SAFETY."""
    return SAFETY * acc + _floor(dtype)


def optim_explanation(dtype: torch.dtype, step: int) -> str:
    return (f"running error bound of {step} lockstep step(s) in {str(dtype).replace('torch.', '')} "
            f"(u={unit_roundoff(dtype):.1e}): {OPTIM_STATE_OPS} roundings per state entry and {OPTIM_UPDATE_OPS} "
            f"per update, propagated through the reference update, safety x{SAFETY:g} "
            f"(derivation: bnverify.tolerances, optimizer section)")
