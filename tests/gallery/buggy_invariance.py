"""Buggy batch norms that break an invariance (suite ``invariance``), most of them right at ordinary values.

Each is the gallery's correct code (``tests.gallery.correct``) with one
change that someone hardening, speeding up or porting a kernel actually
makes: a floor on the std, an overflow guard, a deterministic fixed-point
reduction, statistics from part of a large batch, a "stable" mean from the
running average, a threshold for constant channels, a backward that drops a
term.  Several pass the forward and backward suites, whose inputs have
moderate magnitudes and small batches; only the invariance checks, which
sweep the scale over many orders of magnitude, shift, and permute larger
batches, see them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tests.gallery.correct import (
    BatchNormOps,
    Cs231nBatchNorm,
    batch_statistics,
    compute_dtype,
    per_channel,
    reduce_dims,
    update_running_stats_,
    values_per_channel,
)

__all__ = [
    "StdFloorBatchNorm",
    "PrescaleForgetsEpsBatchNorm",
    "EmaMeanBatchNorm",
    "batch_norm_fixed_point_mean",
    "batch_norm_first_samples",
    "Cs231nConstantThreshold",
    "Cs231nBackwardNoMeanTerm",
]


class StdFloorBatchNorm(BatchNormOps):
    """Bug: the std is floored, ``sqrt(var + eps).clamp(min=1e-3)``, "to never divide by a tiny number".

    The same guard as ``F.normalize``'s ``max(||x||, eps)``, applied on top of
    eps.  With eps >= 1e-6 the std is never below 1e-3 at the magnitudes the
    forward suite uses, so the guard is invisible there; for inputs whose
    spread is below 1e-3 (small activations, or eps scaled with the data) the
    output is shrunk towards beta and scale invariance is lost.  Correct:
    eps is the only constant in the denominator.
    """

    FLOOR = 1e-3

    def _train_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        xf = x.to(compute_dtype(x.dtype))
        dims = reduce_dims(xf)
        mean = xf.mean(dims)
        xmu = xf - per_channel(mean, xf)
        var = (xmu * xmu).mean(dims)
        std = torch.sqrt(var + self.eps).clamp(min=self.FLOOR)
        return self._affine(xmu / per_channel(std, xf)).to(x.dtype), mean, var


class PrescaleForgetsEpsBatchNorm(BatchNormOps):
    """Bug: an overflow guard divides large inputs by their maximum but keeps eps as it is.

    "Above 2^32 the sum of squares of a large batch can overflow float32, so
    I normalise x / amax first" -- which is ``BN(x; eps amax^2)``, not
    ``BN(x; eps)``: eps should have been divided by ``amax^2`` too.  The
    guard also uses ``x.amax()`` where ``x.abs().amax()`` was meant, so it
    fires for large positive values only.  Invisible below 2^32 (the forward
    suite's inputs stay below 1e7).
    """

    THRESHOLD = 2.0**32

    def _train_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        xf = x.to(compute_dtype(x.dtype))
        amax = xf.detach().amax()
        scale = float(amax) if float(amax) > self.THRESHOLD else 1.0
        mean, var, _invstd, xhat = batch_statistics(xf / scale, self.eps)
        return self._affine(xhat).to(x.dtype), mean * scale, var * scale * scale


class EmaMeanBatchNorm(BatchNormOps):
    """Bug: training mode centres with the freshly updated running mean, "a smoother estimate than one batch".

    The running mean is updated first (torch convention) and then
    subtracted, so the output keeps ``(1 - momentum)`` of the batch mean's
    distance from the old running mean: ``BN(x + b) != BN(x)``, and a bias
    before the layer is no longer redundant.  The variance is the batch's
    own, around the batch mean.  Correct: training normalises with the
    batch's own mean; the running mean is only for eval.
    """

    def _train_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        xf = x.to(compute_dtype(x.dtype))
        mean, var, invstd, _xhat = batch_statistics(xf, self.eps)
        if self.running_mean is None:
            center = mean
        else:
            m = self._momentum_factor() if self.momentum is not None else 1.0 / (float(self.num_batches_tracked) + 1)
            center = (1 - m) * self.running_mean.to(xf.dtype) + m * mean
        xhat = (xf - per_channel(center, xf)) * per_channel(invstd, xf)
        return self._affine(xhat).to(x.dtype), mean, var


def _check(input: torch.Tensor, training: bool, running_mean: Any, running_var: Any) -> int:
    if input.dim() < 2:
        raise ValueError(f"expected input of rank >= 2 (N, C, ...), got shape {tuple(input.shape)}")
    m = values_per_channel(input)
    if training and m <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(input.shape)}")
    if not training and (running_mean is None or running_var is None):
        raise ValueError("running_mean and running_var must be given in eval mode")
    return m


def _finish(
    x: torch.Tensor, xhat: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, dtype: torch.dtype
) -> torch.Tensor:
    y = xhat
    if weight is not None:
        y = y * per_channel(weight.to(xhat.dtype), xhat)
    if bias is not None:
        y = y + per_channel(bias.to(xhat.dtype), xhat)
    return y.to(dtype)


def _eval(x: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor, eps: float) -> torch.Tensor:
    invstd = torch.rsqrt(running_var.to(x.dtype) + eps)
    return (x - per_channel(running_mean.to(x.dtype), x)) * per_channel(invstd, x)


def batch_norm_fixed_point_mean(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Bug: a deterministic mean for float32 input, accumulated in int64 fixed point with 24 fraction bits.

    Deterministic GPU reductions often convert to fixed point so that
    atomic adds commute.  The resolution is absolute (2^-24), so for inputs
    whose spread is near or below it the mean is quantised, and above
    ``2^39`` the int64 sum wraps around.  At ordinary magnitudes the error
    (about 2^-25 / sqrt(m)) is below float32's own, so the forward and
    backward suites pass.  The gradient is passed straight through the
    ordinary mean.  Correct: a float reduction (pairwise, or fixed point
    with a per-batch exponent).
    """
    m = _check(input, training, running_mean, running_var)
    acc = compute_dtype(input.dtype)
    x = input.to(acc)
    if training:
        dims = reduce_dims(x)
        plain = x.mean(dims)
        if input.dtype == torch.float32:
            fixed = torch.round(x.detach().double() * 2.0**24).to(torch.int64).sum(dims)
            det = (fixed.double() / 2.0**24 / m).to(acc)
            mean = det + (plain - plain.detach())  # straight-through: the value is det, the gradient the mean's
        else:
            mean = plain
        xmu = x - per_channel(mean, x)
        var = (xmu * xmu).mean(dims)
        xhat = xmu * per_channel(torch.rsqrt(var + eps), x)
        if running_mean is not None and running_var is not None:
            update_running_stats_(running_mean, running_var, mean, var, m, momentum)
    else:
        assert running_mean is not None and running_var is not None
        xhat = _eval(x, running_mean, running_var, eps)
    return _finish(x, xhat, weight, bias, input.dtype)


def batch_norm_first_samples(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Bug: for batches above 32 samples the statistics come from the first 32 only, "to save a pass".

    A sub-sampled estimate of the batch statistics, as in some "ghost batch"
    and large-batch speedups, taken from the head of the batch.  Every
    sample is still normalised, but the result depends on which samples
    come first: permuting the batch changes the output, and the output is
    not exactly zero-mean.  Batches of up to 32 samples (all the forward and
    backward suites use) are right.  Correct: the mean and variance of the
    whole batch.
    """
    m = _check(input, training, running_mean, running_var)
    acc = compute_dtype(input.dtype)
    x = input.to(acc)
    if training:
        head = x[:32]
        mean, var, invstd, _xhat = batch_statistics(head, eps)
        xhat = (x - per_channel(mean, x)) * per_channel(invstd, x)
        if running_mean is not None and running_var is not None:
            update_running_stats_(running_mean, running_var, mean, var, max(m, 2), momentum)
    else:
        assert running_mean is not None and running_var is not None
        xhat = _eval(x, running_mean, running_var, eps)
    return _finish(x, xhat, weight, bias, input.dtype)


class Cs231nConstantThreshold(Cs231nBatchNorm):
    """Bug: channels whose variance is below 1e-12 are treated as constant and output beta.

    "A numerically constant feature should normalise to exactly 0": a fixed
    absolute threshold.  Constant channels (variance 0) are right, and the
    variances the forward suite draws are never that small; features whose
    spread is below 1e-6 (small activations, or eps scaled with the data)
    lose all their signal.  The backward uses the cached (zeroed) xhat.
    Correct: ``(x - mu) / sqrt(var + eps)`` whatever the variance.
    """

    THRESHOLD = 1e-12

    @classmethod
    def batchnorm_forward(
        cls, x: np.ndarray, gamma: np.ndarray | None, beta: np.ndarray | None, bn_param: dict[str, Any]
    ) -> tuple[np.ndarray, dict[str, Any]]:
        out, cache = super().batchnorm_forward(x, gamma, beta, bn_param)
        if cache["mode"] != "train":
            return out, cache
        const = cache["var"] < cls.THRESHOLD
        if np.any(const):
            xhat = np.where(const, 0.0, cache["xhat"])
            cache = dict(cache, xhat=xhat)
            b = np.zeros(x.shape[1]) if beta is None else np.asarray(beta, dtype=np.float64)
            out = (cache["gamma"] * xhat + b).astype(x.dtype)
        return out, cache


class Cs231nBackwardNoMeanTerm(Cs231nBatchNorm):
    """Bug: the compact backward forgets the ``- mean(dout)`` term, ``dx = gamma ivar (dout - xhat mean(dout xhat))``.

    The student simplified the staged backward and lost the path through
    the mean.  The sum of dx over the batch is then ``gamma ivar sum(dout)``
    instead of 0, so a bias before the layer receives a gradient and drifts,
    although the forward pass makes it redundant.  Correct: ``dx = gamma ivar
    (dout - mean(dout) - xhat mean(dout xhat))``.
    """

    @classmethod
    def batchnorm_backward(
        cls, dout: np.ndarray, cache: dict[str, Any]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        dx, dgamma, dbeta = super().batchnorm_backward(dout, cache)
        if cache["mode"] != "train":
            return dx, dgamma, dbeta
        g = dout.astype(np.float64)
        dx = cache["gamma"] * cache["ivar"] * (g - cache["xhat"] * (g * cache["xhat"]).mean(axis=0))
        return dx.astype(cache["dtype"]), dgamma, dbeta
