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

Sensitivity floor (training forward and backward).  The bounds above model one
algorithm, the plain two-pass one.  Another backward-stable algorithm (seed
002's staged graph, the compact closed form, a fused kernel) returns the exact
result of inputs perturbed by a few units of roundoff, and where the result is
very sensitive to its inputs (|mean|/std of 1e5-1e7 with the variance far below
eps, two values per channel) that can exceed a bound derived for a different
order of operations.  So no training-mode bound is smaller than the *measured*
sensitivity of the exact result::

    sens    = max over SENSITIVITY_TRIALS random sign patterns r of
              |f(x (1 + 2u r), dy (1 + 2u r'), gamma (1 + 2u r'')) - f(x, dy, gamma)|
    bound  >= SENSITIVITY_FACTOR * g(m) * sens

with ``f`` the float64 oracle, ``2u`` one ulp (relative) of the compute dtype
(float32 for 16-bit data, as above), elementwise.  A backward-stable algorithm's backward error is at most ``c u`` per
input with ``c`` a small multiple of the reduction growth ``g(m)``; first order,
its forward error is then ``c/2`` times the change one ulp causes, and
``SENSITIVITY_FACTOR = SAFETY`` covers ``c <= 2 SAFETY g(m)``.  Unstable
algorithms are not admitted by it: ``E[x^2] - E[x]^2`` is wrong by ``u kappa^2``
relative in the variance, where one ulp of the inputs moves the result by ``u
kappa``, so at the conditionings that separate them (kappa >= 1e3) it stays
``kappa / (SAFETY g(m))`` times above the floor (``tests/test_tolerances.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from bnverify.reference.batchnorm import affine, per_channel, reduction_axes
from bnverify.reference.batchnorm import backward as backward_ref
from bnverify.reference.batchnorm import forward_train as forward_train_ref

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
    sens = sensitivity_floor(lambda x_, g_p, _dy: forward_train_ref(x_, g_p, beta, eps)[0], x, gamma, None, dtype)
    return Tolerance(np.maximum(bound, sens[0]), _describe(dtype, m, kappa, "forward") + _floor_text(bound, sens[0]))


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

    def grads(x_: np.ndarray, g_p: np.ndarray | None, dy_: np.ndarray | None) -> tuple[np.ndarray, ...]:
        _, cache = forward_train_ref(x_, g_p, None, eps)
        return backward_ref(dy_, cache)

    s_dx, s_dg, s_db = sensitivity_floor(grads, x, gamma, dy, dtype)
    return BackwardTolerance(Tolerance(np.maximum(dx_b, s_dx), text + _floor_text(dx_b, s_dx)),
                             Tolerance(np.maximum(dg_b, s_dg), text + _floor_text(dg_b, s_dg)),
                             Tolerance(np.maximum(db_b, s_db), text + _floor_text(db_b, s_db)))


SENSITIVITY_TRIALS = 4
"""Random sign patterns over which the sensitivity of the exact result is measured (module docstring)."""

SENSITIVITY_FACTOR = SAFETY
"""Multiple of ``g(m)`` times the measured 1-ulp sensitivity below which no training bound goes."""

SENSITIVITY_SEED = 20240531
"""Seed of the sign patterns: the floor is a deterministic function of the case."""


def sensitivity_floor(
    fn: Callable[[np.ndarray, np.ndarray | None, np.ndarray | None], Any], x: np.ndarray,
    gamma: np.ndarray | None, dy: np.ndarray | None, dtype: torch.dtype,
) -> tuple[np.ndarray, ...]:
    """``SENSITIVITY_FACTOR g(m)`` times the largest change of ``fn(x, gamma, dy)`` (float64, exact to
    first order) when every input moves by one ulp of ``dtype`` with random signs, per output."""
    x = np.asarray(x, dtype=np.float64)
    ulp = 2.0 * unit_roundoff(compute_dtype(dtype))  # 16-bit data: float32 accumulation is the contract
    base = fn(x, gamma, dy)
    single = not isinstance(base, tuple)
    base_t = (base,) if single else base
    rng = np.random.default_rng(SENSITIVITY_SEED)
    worst = [np.zeros_like(np.asarray(b, dtype=np.float64)) for b in base_t]

    def jiggle(a: np.ndarray | None) -> np.ndarray | None:
        if a is None:
            return None
        a = np.asarray(a, dtype=np.float64)
        return a * (1.0 + ulp * rng.choice([-1.0, 1.0], a.shape))

    with np.errstate(all="ignore"):
        for _ in range(SENSITIVITY_TRIALS):
            x_j = jiggle(x)
            assert x_j is not None  # x is never None; gamma and dy may be
            out = fn(x_j, jiggle(gamma), jiggle(dy))
            out_t = (out,) if single else out
            for i, (o, b) in enumerate(zip(out_t, base_t)):
                d = np.abs(np.asarray(o, dtype=np.float64) - np.asarray(b, dtype=np.float64))
                worst[i] = np.fmax(worst[i], np.where(np.isfinite(d), d, 0.0))
    m = x.size // max(x.shape[1], 1)
    return tuple(SENSITIVITY_FACTOR * growth(m) * w for w in worst)


def _floor_text(bound: np.ndarray, floor: np.ndarray) -> str:
    """Say so in the explanation when the measured sensitivity, not the derived bound, sets the tolerance."""
    if np.any(floor > bound):
        return (f"; raised where larger to {SENSITIVITY_FACTOR:g} x g(m) x the measured change of the exact result "
                "under a 1-ulp input perturbation (admits every backward-stable algorithm)")
    return ""


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


# --------------------------------------------------------------------------- gradient check (suite `backward`)
# ``test_gradcheck`` compares the target's backward with finite differences of its own forward, in float64.

GRADCHECK = {"eps": 1e-6, "atol": 1e-5, "rtol": 1e-3}
"""float64 finite differences, torch.autograd.gradcheck's defaults (designed for double precision)."""

DIRECTIONAL_FD_STEP = 1e-5
"""Step ``h`` of the central difference ``<f(x + h v) - f(x - h v), dy> / 2h`` that checks targets without
autograd (numpy-cs231n) along a random direction ``v``, in float64.  For inputs of unit scale its
truncation error is ``O(h^2) ~ 1e-10`` and its rounding error ``O(u/h) ~ 1e-11`` relative, both far below
``GRADCHECK["rtol"]``; ``h`` is near the optimum ``u^(1/3) ~ 5e-6`` of a central difference."""


def directional_gradcheck(dx: np.ndarray, v: np.ndarray) -> float:
    """Allowed ``|numeric - analytic|`` for the directional derivative ``<dx, v>``.

    ``GRADCHECK``'s rtol times the largest the sum can be, ``sum|dx| max|v|``, plus its atol.  The
    ``1e-12`` only keeps the scale positive when ``dx = 0``; it is far below the atol.
    """
    scale = float(np.abs(dx).sum() * np.abs(v).max()) + 1e-12
    return GRADCHECK["rtol"] * scale + GRADCHECK["atol"]


# --------------------------------------------------------------------------- modes suite (running statistics)
#
# Running statistics after k training steps (``suites/test_bn_modes.py``).  One step with new-batch weight ``w``:
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

MOMENTUM_WEIGHT_ATOL = 1e-3
"""Absolute tolerance on a *measured* new-batch weight (``bnverify.fingerprint``: the momentum-meaning
probe, which tells 0.2 from 0.8 and 1, and the default momentum): one training step from running mean 0
gives ``w mu_B`` with ``mu_B`` of order 1, measured to a few float32 ulps; the weights told apart differ
by at least 0.09 (the conventions' 0.1 and 0.01)."""

DEFAULT_MOMENTUM_ATOL = MOMENTUM_WEIGHT_ATOL
"""The same tolerance on the new-batch weight of the default momentum (``test_constructor_defaults``)."""


TOGGLE_STEPS_FACTOR = 8.0
"""Steps' worth of batch-statistics error allowed on the running statistics in ``test_mode_toggling``
(see ``toggled_running``): the sequence trains three times before its last eval step, each step adds at
most one batch's error, and 3 is rounded up to a power of two because the bound is evaluated on the eval
batch, not on the batches trained on (other draws of the same conditioning)."""

TOGGLE_ULPS = 16
"""Ulps of the expected running value allowed in ``test_mode_toggling`` for the blends themselves: each
training step rounds three times in the buffer dtype (``running_update``'s blend term), nine roundings
over the sequence's three steps, rounded up to 16."""


def toggled_running(
    x: np.ndarray, rm: np.ndarray, rv: np.ndarray, unbiased: bool, dtype: torch.dtype,
) -> tuple[np.ndarray, np.ndarray]:
    """Bounds on the running mean and variance read before an eval step of ``test_mode_toggling``.

    ``running_update``'s bound for one step on the eval batch ``x`` with new-batch weight 1 (the batch
    statistics' own error, nothing carried), times ``TOGGLE_STEPS_FACTOR``, plus ``TOGGLE_ULPS`` ulps of
    the expected values ``rm``/``rv``.  The mistakes the check looks for (an update in eval, an update
    skipped after eval) move the statistics by a whole batch's weight, orders of magnitude more.
    """
    bm, bv = running_update(x, rm, rv, 1.0, unbiased, dtype, np.zeros_like(rm), np.zeros_like(rv))
    u = unit_roundoff(dtype)
    return (bm * TOGGLE_STEPS_FACTOR + np.abs(rm) * u * TOGGLE_ULPS,
            bv * TOGGLE_STEPS_FACTOR + np.abs(rv) * u * TOGGLE_ULPS)


SINGLE_VALUE_RTOL = 1e-5
SINGLE_VALUE_ATOL = 1e-6
"""``np.allclose`` tolerances on the running statistics after a training step on one value per channel,
under conventions that allow it (biased running variance, ``test_single_value_per_channel``): the batch
variance is exactly 0 and the batch mean is the value itself, so the update is one blend per buffer, a
few float32 ulps (6e-8) relative.  1e-5 relative (and 1e-6 absolute, for statistics near 0) is a
generous allowance for that, while the mistakes looked for (no update, the wrong weight, the unbiased
factor) move the statistics by ``w |x - r|``, of order 1e-2 for the values the check draws."""


# --------------------------------------------------------------------------- fingerprint probes
# ``bnverify fingerprint`` tells conventions apart by running the target on float32 inputs built so that
# each answer is a number of order 1, measured to a few float32 ulps (6e-8 relative), while the answers it
# chooses between differ by at least 0.5%.  Each probe tolerance sits between the two.

PROBE_MOMENTUM_NONE_RTOL = 1e-5
"""``momentum=None`` probe: batch means 1, 3, 8 give the cumulative average 1, 2, 4; an exponential
average (momentum 0.1) would give 0.1, 0.39, 1.15."""

PROBE_ESTIMATOR_ATOL = 1e-4
"""Running-variance estimator probe: stored / batch variance is 4/3 (unbiased, m = 4) or 1 (biased)."""

PROBE_EPS_PLACEMENT_RTOL = 1e-4
"""eps-placement probe (eval at running_var 0, eps, 1 with eps = 0.01): the closest candidates,
``1/sqrt(1 + eps)`` and ``1/(1 + eps)``, differ by 0.5%."""

PROBE_EVAL_RTOL = 1e-4
PROBE_EVAL_ATOL = 1e-5
"""Eval-statistics probe: eval output with running statistics (means +-5, variances 0.25-9) against
the batch's own statistics (mean 0, variance 2.5); the two differ by whole units."""

PROBE_DEBIAS_ATOL = 1e-4
"""EMA zero-debiasing probe: after one step with new-batch weight 0.1 on batch mean 2, the running mean is
2 (debiased, Haiku) or 0.2."""

PROBE_ALLCLOSE_ATOL = 1e-8
"""numpy's default absolute floor of ``np.allclose``, kept where a probe relies on it; every probed value
is of order 1, so it never decides."""


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


def permutation_pair(tol: Tolerance, perm: np.ndarray | None = None) -> Tolerance:
    """Two evaluations of the target on one batch in two orders, each within ``tol`` of the same
    permutation-invariant oracle: by the triangle inequality they differ by at most ``2 tol`` (taken in
    the permuted order ``perm`` for per-sample values)."""
    bound = tol.bound if perm is None else tol.bound[perm]
    return Tolerance(2 * bound, "two evaluations, each within its own bound of the permutation-invariant "
                                "oracle: " + tol.explanation)


def bias_gradient(dx_tol: Tolerance, dx: np.ndarray, axes: tuple[int, ...]) -> Tolerance:
    """Bound on ``sum_n dL/dz`` (the gradient reaching a bias before batch norm), exactly 0 for a correct
    backward: the sum over the batch of the backward's elementwise ``dx`` bound, plus float64 rounding."""
    return Tolerance(sum_of_bounds(dx_tol.bound, dx, axes),
                     "sum over the batch of the backward's elementwise dx bound, plus float64 rounding of the sum; "
                     + dx_tol.explanation)


def weight_gradient_inner(
    dx_tol: Tolerance, dz: np.ndarray, z: np.ndarray, z_full: np.ndarray, zc: np.ndarray,
    w: np.ndarray, gw: np.ndarray, axes: tuple[int, ...], n_terms: int,
) -> Tolerance:
    """Bound on ``<w_k, dL/dw_k> - dgamma_k eps/(var_k + eps)`` for ``z = layer(u, W)`` (seed 003).

    ``<w_k, dL/dw_k> = sum_n dL/dz_k (z_k - bias_k)``: the backward's ``dx`` bound summed with weight
    ``|z - bias|`` (``sum_of_bounds``), plus the exactly known effect of the target seeing ``z`` rounded to
    its dtype (``|dz| |z_full - z|``), plus float64's rounding of the harness's products (``w``, ``gw`` the
    weight rows and their gradients, flattened).
    """
    bound = (sum_of_bounds(dx_tol.bound, dz, axes, weight=zc)
             + (np.abs(dz) * np.abs(z_full - z)).sum(axis=axes)
             + layer_product_rounding(n_terms) * (np.abs(w) * np.abs(gw)).sum(axis=1))
    return Tolerance(bound, "sum over the batch of |z| times the backward's dx bound, plus the rounding of z "
                            "to the target dtype and float64's of the products; " + dx_tol.explanation)


def through_layer(
    carried: np.ndarray, products: np.ndarray, n_terms: int, exact: Tolerance,
) -> Tolerance:
    """An exact-scaling bound on ``dL/dz`` carried back through the preceding layer.

    ``carried`` is the bound pushed through the layer's backward with absolute values (``|ddz| @ |W|`` or
    ``|ddz|^T @ |u|``), ``products`` the same with ``|dz|`` (the size of the products float64 rounds).
    """
    return Tolerance(carried + layer_product_rounding(n_terms) * products,
                     exact.explanation + "; carried through the layer as |ddz| @ |W| and |ddz|^T @ |u|, plus "
                     "float64 rounding of the products")


SGD_NORM_ULPS = 4.0
"""Ulps of float64 (of ``||w_k||^2``) allowed for forming the two squared norms and their difference in
``sgd_norm_change_floor``.  The check's learning rate moves each row by about a tenth of its norm, so the
step's own ``lr^2 ||g||^2 ~ 1e-2 ||w||^2`` dwarfs this term: it only keeps exact ties from failing."""


def sgd_norm_change_floor(lr: float, inner: np.ndarray, inner_bound: np.ndarray, wnorm: np.ndarray) -> np.ndarray:
    """Least ``||w - lr g||^2 - ||w||^2`` may be after one plain SGD step on weight rows ``w`` (seed 003).

    ``||w - lr g||^2 - ||w||^2 = -2 lr <w, g> + lr^2 ||g||^2 >= -2 lr <w, g>``, and ``<w, g>`` is at most
    its exact value ``inner`` (the eps term; only a positive one can shrink the norm) plus its bound, and
    ``SGD_NORM_ULPS`` of rounding come on top.
    """
    return -2 * lr * (np.maximum(inner, 0) + inner_bound) - SGD_NORM_ULPS * ORACLE_U * wnorm**2


def running_permutation_tolerances(x: np.ndarray, dtype: torch.dtype) -> tuple[Tolerance, Tolerance]:
    """``running_permutation``'s bounds on the running mean and variance, with their explanation."""
    tm, tv = running_permutation(x, dtype)
    text = "twice the error of the batch mean / two-pass variance (bnverify.tolerances.running_permutation)"
    return Tolerance(tm, text), Tolerance(tv, text)


# --------------------------------------------------------------------------- diagnosis (likely causes, never verdicts)
# These decide which likely cause a failure report names, never whether a check passes.

MATCH_SLACK = 1.0001
"""A bug hypothesis *matches* the target's numbers when they lie within the check's own tolerance of it,
times this: 0.01% of headroom, so that a result right at the bound is not lost to the rounding of the
comparison itself (``compare.matches``, the running-statistics hypotheses of ``diagnose.modes``)."""

ONE_PASS_ENVELOPE = 64.0
"""A forward failure that no bug hypothesis matches is attributed to the variance computed as
``E[x^2] - E[x]^2`` only if the variance the output implies is off by at most this many unit roundoffs of
``E[x^2]`` (what one pass can lose: the two moments each carry about ``log2(m) u`` relative error with the
cascade sums of torch and numpy, ``log2 m <= 16`` for the suites' batches, times 4 for safety) and by more
than this many of ``var`` itself (beyond what a two-pass variance loses).  The cancellation error is
rounding, so no simulation reproduces it bit for bit; this bounds it instead (``diagnose.forward``)."""

BIAS_GRAD_MATCH_RTOL = 0.01
"""Relative slack when testing whether the gradient reaching a bias before batch norm is
``gamma/sigma sum(dy)`` (a backward without the ``-mean(dy)`` term): 1% covers the target's own rounding
of ``gamma/sigma`` in any dtype down to bfloat16 (u = 0.4%)."""


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


# --------------------------------------------------------------------------- perf gate (suite `bench`)
# A regression is a slowdown of the target relative to torch's native batch norm timed in the same
# rounds, larger than both runs' noise allows.  Statistic per run: rho = L(target) - L(native), L the
# mean log-time of an arm's fastest tenth (at least 3 samples: the undisturbed mode of host timings),
# with standard error sd/sqrt(k) per arm.  The change D = rho_now - rho_baseline fails when
# D > max(PERF_GATE_Z * sqrt(se_now^2 + se_baseline^2), log(1 + floor)), floor PERF_GATE_MIN_SLOWDOWN, or
# PERF_GATE_MIN_SLOWDOWN_BUSY when either run's load average exceeded its cores.
# Derivation and the measurements behind the floors: bnverify.bench.gate.
PERF_GATE_Z = 3.0
"""One-sided z of the noise threshold: a false alarm below 0.14% per case under normal errors (~2% over a run's 12 cases)."""

PERF_GATE_MIN_SLOWDOWN = 0.25
"""Smallest slowdown relative to native that fails (25%): run-to-run variation that one run does not show."""

PERF_GATE_MIN_SLOWDOWN_BUSY = 0.75
"""The same when either run's load average exceeded its cores: measured run-to-run changes reached 68%."""

PERF_GATE_MIN_ROUNDS = 6
"""Fewer rounds in either run: the case is reported as undecided, never failed."""


# --------------------------------------------------------------------------- initializer suite (`init`)
# An initialiser's output is random, so its checks (``bnverify.init_check``) are hypothesis tests of its
# samples against the law it claims, and a threshold is a probability of failing a correct initialiser,
# not a rounding bound.
#
# Family-wise rate.  One run of the ``init`` suite makes at most INIT_MAX_TESTS statistical tests (each
# check records how many in its metric ``statistical tests``; ``tests/test_init.py`` sums them over a run
# for every reference and keeps the sum below this bound).  Each test fails a correct initialiser with
# probability at most INIT_ALPHA = INIT_FAMILY_ALPHA / INIT_MAX_TESTS, so by Bonferroni (a union bound,
# valid whatever the dependence between the tests) a correct initialiser fails a run with probability
# at most INIT_FAMILY_ALPHA = 1e-6.  The tests, and why each meets INIT_ALPHA:
#
# * Kolmogorov-Smirnov: D against ``scipy.stats.kstwo.isf(INIT_ALPHA, n)``, the exact one-sample law of
#   D for a continuous distribution.  float32 samples move D by < 1e-6, far below the critical values
#   (0.025 at n = 16384, 0.070 at n = 2048).
# * the mean and the second moment about the law's mean: z statistics of a mean of n iid terms.  The
#   two-sided normal quantile at INIT_ALPHA = 5e-9 is 5.85; the skewness of the mean moves the quantile
#   by gamma (z^2 - 1) / 6 (Cornish-Fisher).  The worst term is x^2 under a normal law (chi-square(1):
#   skewness 2.83, excess kurtosis 12); at n >= INIT_MIN_SAMPLES = 2048 the Cornish-Fisher terms add
#   +0.35 (skewness), +0.05 (kurtosis), -0.04 (skewness squared), so the exact quantile is below 6.21
#   and INIT_Z = 6.5 covers it.  Uniform and truncated-normal terms are bounded, with smaller skewness.
# * tail counts (``check_support``): exact binomial p-values of the counts beyond the law's
#   INIT_TAIL_MASS quantiles, two-sided, against INIT_ALPHA.
# * samples outside a bounded law's support: probability 0 for a correct initialiser; the bound itself
#   is allowed INIT_SUPPORT_ULPS float32 ulps for its own rounding (torch computes it in float64 and
#   rounds the uniform draw to float32).
#
# Power at the suite's n = INIT_SAMPLES = 16384: the second-moment test's standard error is sqrt(2/n) =
# 1.1% of the variance under a normal law, so a std off by 4% fails.  fan_out for fan_in on the 400 -> 25
# layer is a factor 4 in std, a missing ReLU gain sqrt(2), a uniform bound without its sqrt(3) 1.73,
# truncation without the 0.8796 correction 1.14: from 13 to over 1000 standard errors.  The smallest
# layers (1 -> 1) are drawn INIT_MAX_CALLS times, n = 2048 = INIT_MIN_SAMPLES; the false-failure sweep
# of ``tests/test_init.py`` runs every check at that n.
INIT_FAMILY_ALPHA = 1e-6
"""Largest probability that a correct initialiser fails one run of the ``init`` suite (any check)."""

INIT_MAX_TESTS = 200
"""Upper bound on the statistical tests of one ``init`` run (measured: 38 to 55 per reference)."""

INIT_ALPHA = INIT_FAMILY_ALPHA / INIT_MAX_TESTS
"""Per-test false-failure probability (Bonferroni): 5e-9."""

INIT_Z = 6.5
"""|z| bound of the mean and second-moment tests: the 5e-9 two-sided quantile (5.85) plus its
Cornish-Fisher correction at n >= 2048 (<= 0.36), rounded up."""

INIT_MIN_SAMPLES = 2048
"""Fewest samples any statistical test sees (the Cornish-Fisher bound above needs n >= 2048)."""

INIT_MAX_CALLS = 2048
"""Most calls to the target for one sample (tiny layers): n >= min(INIT_SAMPLES, 2048 x numel) >= 2048."""

INIT_SAMPLES = 16384
"""Samples per statistical test in the suite (fresh tensors of the case's shape until there are this many)."""

INIT_TAIL_MASS = 0.01
"""Mass of each outer tail counted by ``check_support``: a uniform's edges [0.98 b, b], a normal's
points beyond 2.33 sd, both emptied by the classic bound and truncation mistakes."""

INIT_SUPPORT_ULPS = 4
"""float32 ulps of slack on a bounded law's support (relative), for the rounding of the bound."""

INIT_SUPPORT_COUNT = 20
"""A failure's explanation tells a law from the claimed one by support alone when one of them puts more
than this many of the n samples where the other has none (a Poisson count of 20 is never 0: e^-20)."""

# Six-layer study (suite ``init-study``, seed 001).  The verdict compares, per layer and nonlinearity,
# the target's mean over INIT_STUDY_SEEDS seeds of log(std of the layer's activations) with the
# reference's mean over the same seeds.  The band is the reference's own measured seed-to-seed spread
# s (sample sd of its per-seed log-stds): mean_ref +- t * s * sqrt(1/S + 1/S), t the two-sided Student
# quantile with S - 1 degrees of freedom at INIT_FAMILY_ALPHA / (6 layers x 2 nonlinearities), so a
# target drawing from the reference's law leaves a band with probability below 1e-6 per run (Bonferroni;
# it has the reference's spread by construction).  Log-stds are compared because a wrong scale
# compounds multiplicatively through the layers.  A spread of exactly 0 (impossible with 500 x 1000
# activations) would be floored at INIT_STUDY_FLOOR.
INIT_STUDY_SEEDS = 10
"""Seeds per network and initialiser in the six-layer study."""

INIT_STUDY_FLOOR = 1e-3
"""Smallest seed-to-seed sd of a log-std the study's band uses (0.1%)."""


def init_study_t(seeds: int = INIT_STUDY_SEEDS, comparisons: int = 12) -> float:
    """Two-sided Student quantile of the study's band (15.5 for 10 seeds and 12 comparisons)."""
    from scipy import stats

    return float(stats.t.isf(INIT_FAMILY_ALPHA / comparisons / 2, seeds - 1))


# ---------------------------------------------------------------------------------------------------
# Banded verdicts (seed claims and the convergence suite; ``bnverify.convergence.bands``).  A claim's
# estimate is the mean over seeds of its statistic; its band is mean +/- max(t * sigma / sqrt(n), floor)
# with sigma^2 = s_seed^2 + s_run^2 (measured seed-to-seed spread, and run-to-run spread from a twin run
# of the same seed with a second correct implementation on last-bit-perturbed data), t the one-sided
# BAND_CONFIDENCE quantile of Student's t at the Welch-Satterthwaite degrees of freedom.  Reproduced when
# the whole band is on the claim's side of its threshold, not reproduced when it is wholly on the other
# side, inconclusive when it straddles: no outcome is decided inside the measured noise.
BAND_CONFIDENCE = 0.99
"""One-sided confidence of each edge of a band (t quantile 6.96 with 2 degrees of freedom, 2.33 with many)."""

CLAIM_SEEDS = (0, 1, 2)
"""Seeds of a seed claim's experiment: two degrees of freedom for its seed-to-seed spread."""

CLAIM_TWIN_SEEDS = 1
"""Seeds (the first ones) also trained as twins to measure the run-to-run spread of a claim's statistic."""

CLAIM_TWIN_ULPS = 1
"""The twin's training images move by this many float32 ulps (random sign per pixel, zeros kept): the
last-bit difference another machine's kernels make, which training then amplifies like theirs."""


# --------------------------------------------------------------------------- reported examples (never verdicts)

ILL_CONDITIONED_MEAN_OVER_STD = 10.0
"""A failing example whose input has |mean|/std above this in some channel is ill-conditioned (the
suites' ``large_mean`` input starts here; for a check that trains on several batches derived from the
case, any of them counts); before it is reported, the same check is run on inputs of the same shape,
dtype and eps at ordinary conditioning (``bnverify.strategies.reported_failure``, wired into a check by
``ordinary_first``), so that a bug that fails everywhere is shown on an ordinary input and
ill-conditioning is named as the trigger only when ordinary inputs pass."""

ORDINARY_MEAN_OVER_STD = 1.0
"""Ordinary conditioning: |mean|/std at most this in every channel (the ``ordinary`` input of
``bnverify.strategies.make_input``, with spreads in [0.5, 2]: variances from 0.25 to 4, where the suites'
eps reach 0.5)."""

ORDINARY_RETRIES = 4
"""How many ordinary inputs (data seeds) a failing ill-conditioned example is retried on: a bug that
fails on ordinary input fails on each of them in practice (every gallery bug that does fails on the
first), and each retry costs one run of the check's calls, on the reported example only."""


# --------------------------------------------------------------------------- comparing two runs (`bnverify compare`)
# These decide in which section `bnverify compare` lists a change, never a verdict.

COMPARE_NEAR_TOLERANCE = 0.9
"""A passing check whose worst err/tol reaches this sits close to its tolerance: a rise to it from below
``COMPARE_FAR_FROM_TOLERANCE`` (or a fall from it to below that) is a tolerance crossing, listed right after
the verdict flips.  0.9 leaves 10% before the check fails."""

COMPARE_FAR_FROM_TOLERANCE = 0.5
"""The other end of a tolerance crossing: an err/tol below half its tolerance is comfortably inside it."""

SEED_NOISE_FACTOR = 10.0
"""Between two runs with different seeds, a metric that changed by less than this factor (max/min of the
two, same sign) moved within seed noise.  Derivation: err/tol is the largest rounding error of the drawn
examples over a worst-case bound; a different seed draws other shapes, values per channel m and
conditioning, and the realised fraction of the bound moves with them.  Measured for torch's batch norm
over seeds 0, 1 and 2 (``bnverify check torch --suite forward --suite invariance --seed S``, the 25 checks
with a nonzero err/tol in all three): max/min of a check's err/tol has median 1.27, 90th percentile 2.58
and maximum 2.80 (test_scale_fixed_eps[float32]); 10 leaves more than 3x headroom over the largest.
With the same seed both runs draw the same examples, so every change beyond ``--rtol/--atol`` is news."""
