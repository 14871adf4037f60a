"""Batch normalization in numpy float64: the oracle every target is held to.

Layout: the channel axis is axis 1 and statistics are taken over every other
axis, so ``(N, C)``, ``(N, C, L)``, ``(N, C, H, W)`` and ``(N, C, D, H, W)``
are all handled by the same code (the spatial positions of one channel are
samples of that channel, as in ``torch.nn.BatchNorm2d``).  ``m`` below is the
number of values per channel: ``N * prod(spatial)``.

Everything is computed in float64, whatever dtype comes in: callers pass the
exact values the target saw (its own dtype, upcast), so the only error left in
a comparison is the target's.

The formulas follow the seeds (``shared/seeds``):

* 002 gives the forward pass in nine named steps and the backward pass
  staged step by step; ``forward_train`` and ``backward_staged`` keep those
  steps, ``backward`` is the compact closed form, and the tests hold the two
  equal to each other and to finite differences.
* 000 gives inference with population statistics,
  ``Var[x] = m/(m-1) E_B[sigma_B^2]``, and the folded inference transform
  ``y = gamma/sqrt(Var+eps) x + (beta - gamma E[x]/sqrt(Var+eps))``.
* 004 gives the exponentially weighted running averages used at test time.

Conventions (momentum meaning, biased or unbiased running variance) are
keyword arguments with the torch defaults, as optax does: nothing is guessed.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import numpy as np

__all__ = [
    "Cache",
    "reduction_axes",
    "per_channel",
    "affine",
    "batch_stats",
    "forward_train",
    "forward_eval",
    "backward_staged",
    "backward",
    "update_running",
    "fold",
    "fold_into_linear",
]

MomentumKind = Literal["update_fraction", "keep_fraction"]


def reduction_axes(ndim: int) -> tuple[int, ...]:
    """Every axis but the channel axis 1: ``(0, 2, 3, ...)``."""
    if ndim < 2:
        raise ValueError(f"batch norm needs input of rank >= 2 (N, C, ...), got rank {ndim}")
    return (0,) + tuple(range(2, ndim))


def per_channel(v: np.ndarray, ndim: int) -> np.ndarray:
    """Reshape a ``(C,)`` vector so that it broadcasts against rank-``ndim`` input."""
    return np.asarray(v, dtype=np.float64).reshape((1, -1) + (1,) * (ndim - 2))


def affine(x: np.ndarray, gamma: np.ndarray | None, beta: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """``gamma``/``beta`` broadcastable against ``x``; ``None`` means ``affine=False`` (1 and 0)."""
    c = x.shape[1]
    return (per_channel(np.ones(c) if gamma is None else gamma, x.ndim),
            per_channel(np.zeros(c) if beta is None else beta, x.ndim))


def batch_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-channel mean, biased variance and count ``m``, by the two-pass formula.

    ``mean = 1/m sum x``, ``var = 1/m sum (x - mean)^2``.
    """
    x = np.asarray(x, dtype=np.float64)
    axes = reduction_axes(x.ndim)
    m = x.size // x.shape[1] if x.shape[1] else 0
    mean = x.mean(axis=axes)
    var = ((x - per_channel(mean, x.ndim)) ** 2).mean(axis=axes)
    return mean, var, m


class Cache(NamedTuple):
    """What the backward pass needs, named after seed 002's steps."""

    xhat: np.ndarray  # step 7
    xmu: np.ndarray  # step 2
    ivar: np.ndarray  # step 6, per channel, broadcastable
    sqrtvar: np.ndarray  # step 5, per channel, broadcastable
    var: np.ndarray  # step 4, per channel, broadcastable
    gamma: np.ndarray  # per channel, broadcastable
    eps: float
    m: int


def forward_train(
    x: np.ndarray, gamma: np.ndarray | None, beta: np.ndarray | None, eps: float
) -> tuple[np.ndarray, Cache]:
    """Training-mode forward with batch statistics, in seed 002's nine steps.

    1. ``mu = 1/m sum_i x_i``                      (mean, Equation 1)
    2. ``xmu = x - mu``                            (mean subtraction)
    3. ``sq = xmu^2``
    4. ``var = 1/m sum_i sq_i``                    (biased variance, Equation 2)
    5. ``sqrtvar = sqrt(var + eps)``
    6. ``ivar = 1 / sqrtvar``
    7. ``xhat = xmu * ivar``                       (normalize, Equation 3)
    8. ``gammax = gamma * xhat``                   (rescale)
    9. ``out = gammax + beta``                     (translate, Equation 4)

    ``gamma``/``beta`` of ``None`` mean ``affine=False`` (1 and 0).
    Normalisation always uses the biased variance, in every framework.
    """
    x = np.asarray(x, dtype=np.float64)
    nd = x.ndim
    axes = reduction_axes(nd)
    m = x.size // x.shape[1]
    g, b = affine(x, gamma, beta)
    mu = x.mean(axis=axes, keepdims=True)  # step 1
    xmu = x - mu  # step 2
    sq = xmu**2  # step 3
    var = sq.mean(axis=axes, keepdims=True)  # step 4
    sqrtvar = np.sqrt(var + eps)  # step 5
    ivar = 1.0 / sqrtvar  # step 6
    xhat = xmu * ivar  # step 7
    gammax = g * xhat  # step 8
    out = gammax + b  # step 9
    return out, Cache(xhat, xmu, ivar, sqrtvar, var, g, float(eps), m)


def forward_eval(
    x: np.ndarray,
    gamma: np.ndarray | None,
    beta: np.ndarray | None,
    running_mean: np.ndarray,
    running_var: np.ndarray,
    eps: float,
) -> np.ndarray:
    """Inference-mode forward: ``gamma (x - E[x]) / sqrt(Var[x] + eps) + beta``.

    ``E[x]`` and ``Var[x]`` are the stored (population or running) statistics;
    each sample's output depends on that sample alone.
    """
    x = np.asarray(x, dtype=np.float64)
    nd = x.ndim
    g, b = affine(x, gamma, beta)
    mean = per_channel(running_mean, nd)
    var = per_channel(running_var, nd)
    return g * (x - mean) / np.sqrt(var + eps) + b


def backward_staged(dout: np.ndarray, cache: Cache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Backward pass through the nine forward steps, in reverse (seed 002).

    9. ``dbeta = sum dout``
    8. ``dgamma = sum dout * xhat``; ``dxhat = dout * gamma``
    7. ``divar = sum dxhat * xmu``; ``dxmu1 = dxhat * ivar``
    6. ``dsqrtvar = -1/sqrtvar^2 * divar``
    5. ``dvar = 0.5 * ivar * dsqrtvar``
    4. ``dsq = 1/m * dvar``
    3. ``dxmu2 = 2 * xmu * dsq``
    2. ``dx1 = dxmu1 + dxmu2``; ``dmu = -sum dx1``
    1. ``dx2 = 1/m * dmu``; ``dx = dx1 + dx2``
    """
    dout = np.asarray(dout, dtype=np.float64)
    axes = reduction_axes(dout.ndim)
    xhat, xmu, ivar, sqrtvar, _var, g, _eps, m = cache
    dbeta = dout.sum(axis=axes)  # step 9
    dgamma = (dout * xhat).sum(axis=axes)  # step 8
    dxhat = dout * g
    divar = (dxhat * xmu).sum(axis=axes, keepdims=True)  # step 7
    dxmu1 = dxhat * ivar
    dsqrtvar = -1.0 / sqrtvar**2 * divar  # step 6
    dvar = 0.5 * ivar * dsqrtvar  # step 5
    dsq = dvar / m  # step 4
    dxmu2 = 2.0 * xmu * dsq  # step 3
    dx1 = dxmu1 + dxmu2  # step 2
    dmu = -dx1.sum(axis=axes, keepdims=True)
    dx2 = dmu / m  # step 1
    dx = dx1 + dx2
    return dx, dgamma, dbeta


def backward(dout: np.ndarray, cache: Cache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Compact closed-form backward pass.

    With ``xhat = (x - mu) / sqrt(var + eps)`` and ``g = dout``::

        dbeta  = sum g
        dgamma = sum g * xhat
        dx     = gamma / sqrt(var + eps) * (g - mean(g) - xhat * mean(g * xhat))

    (``xhat`` carries ``sqrt(var + eps)``, so the formula is exact for any eps.)
    The first sum is why ``sum_i dx_i = 0`` per channel, and the last term
    is the one a backward that treats the batch statistics as constants drops.
    """
    dout = np.asarray(dout, dtype=np.float64)
    axes = reduction_axes(dout.ndim)
    xhat, _xmu, ivar, _sqrtvar, _var, g, _eps, _m = cache
    dbeta = dout.sum(axis=axes)
    dgamma = (dout * xhat).sum(axis=axes)
    mean_g = dout.mean(axis=axes, keepdims=True)
    mean_gxhat = (dout * xhat).mean(axis=axes, keepdims=True)
    dx = g * ivar * (dout - mean_g - xhat * mean_gxhat)
    return dx, dgamma, dbeta


def update_running(
    running_mean: np.ndarray,
    running_var: np.ndarray,
    x: np.ndarray,
    *,
    momentum: float | None = 0.1,
    momentum_kind: MomentumKind = "update_fraction",
    unbiased: bool = True,
    num_batches_tracked: int = 0,
) -> tuple[np.ndarray, np.ndarray, int]:
    """One running-statistics update from batch ``x``; returns ``(mean, var, num_batches_tracked)``.

    Batch statistics ``mu_B``, ``sigma_B^2`` (biased) over ``m`` values.  The
    value folded into the variance is ``m/(m-1) sigma_B^2`` when ``unbiased``
    (torch, seed 000's ``Var[x] = m/(m-1) E_B[sigma_B^2]``), else ``sigma_B^2``
    (keras, flax, cs231n, ONNX).

    * ``momentum_kind="update_fraction"`` (torch): ``r = (1 - m) r + m b``.
    * ``momentum_kind="keep_fraction"`` (keras, flax, cs231n): ``r = m r + (1 - m) b``.
    * ``momentum=None`` (torch only): cumulative average with weight
      ``1 / num_batches_tracked`` after the counter is incremented, which is
      the population statistic of seed 000 over the batches seen so far.
    """
    mean_b, var_b, m = batch_stats(x)
    if unbiased:
        var_b = var_b * m / (m - 1) if m > 1 else np.full_like(var_b, np.nan)
    n = num_batches_tracked + 1
    if momentum is None:
        w_new = 1.0 / n
    elif momentum_kind == "update_fraction":
        w_new = float(momentum)
    elif momentum_kind == "keep_fraction":
        w_new = 1.0 - float(momentum)
    else:
        raise ValueError(f"unknown momentum_kind {momentum_kind!r}")
    rm = np.asarray(running_mean, dtype=np.float64)
    rv = np.asarray(running_var, dtype=np.float64)
    return (1.0 - w_new) * rm + w_new * mean_b, (1.0 - w_new) * rv + w_new * var_b, n


def fold(
    gamma: np.ndarray | None,
    beta: np.ndarray | None,
    running_mean: np.ndarray,
    running_var: np.ndarray,
    eps: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The folded inference transform of seed 000: per-channel ``(scale, shift)``.

    ``y = gamma/sqrt(Var+eps) x + (beta - gamma E[x]/sqrt(Var+eps))``, so
    ``scale = gamma/sqrt(Var+eps)`` and ``shift = beta - scale E[x]``.
    """
    mean = np.asarray(running_mean, dtype=np.float64)
    var = np.asarray(running_var, dtype=np.float64)
    g = np.ones_like(mean) if gamma is None else np.asarray(gamma, dtype=np.float64)
    b = np.zeros_like(mean) if beta is None else np.asarray(beta, dtype=np.float64)
    scale = g / np.sqrt(var + eps)
    return scale, b - scale * mean


def fold_into_linear(
    weight: np.ndarray,
    bias: np.ndarray | None,
    gamma: np.ndarray | None,
    beta: np.ndarray | None,
    running_mean: np.ndarray,
    running_var: np.ndarray,
    eps: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Fold an eval-mode batch norm into the preceding Linear or Conv.

    ``weight`` has the output channel on axis 0 (torch layout ``(out, in, *k)``).
    Returns ``(W', b')`` with ``W' = scale * W`` per output channel and
    ``b' = scale * (b - E[x]) + beta``.
    """
    scale, shift = fold(gamma, beta, running_mean, running_var, eps)
    w = np.asarray(weight, dtype=np.float64)
    b0 = np.zeros(w.shape[0]) if bias is None else np.asarray(bias, dtype=np.float64)
    w_folded = w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
    return w_folded, scale * b0 + shift
