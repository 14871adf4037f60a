"""Buggy batch-norm modules (kind ``torch-module``), each wrong in exactly one way.

Each class is what someone porting a kernel (CUDA, Triton), a JAX/Flax
layer or a course solution to a ``torch.nn.BatchNorm2d``-compatible module
actually wrote.  Forward bugs subclass ``correct.BatchNormOps`` (plain ops,
autograd backward) and override the one method that holds the mistake;
backward bugs subclass ``correct.BatchNorm`` and swap in a hand-written
``torch.autograd.Function`` whose backward is wrong while its forward is
right.  Everything else (constructor, buffers, running-statistics update,
mode logic) is the correct code, so each class fails only the checks aimed
at its mistake.
"""

from __future__ import annotations

from typing import Any

import torch

from tests.gallery.correct import (
    BatchNorm,
    BatchNormEvalFunction,
    BatchNormOps,
    BatchNormTrainFunction,
    batch_statistics,
    compute_dtype,
    per_channel,
    reduce_dims,
    values_per_channel,
)

__all__ = [
    "UnbiasedVarianceBatchNorm",
    "HardcodedEpsBatchNorm",
    "OnePassVarianceBatchNorm",
    "IgnoresStridesBatchNorm",
    "FlattenRowsBatchNorm",
    "PerPositionStatsBatchNorm",
    "Float32OutputBatchNorm",
    "InPlaceInputBatchNorm",
    "EvalBatchStatsBatchNorm",
    "EvalEpsOutsideSqrtBatchNorm",
    "StatsAsConstantsBatchNorm",
    "NoVarianceTermBatchNorm",
    "BesselGradBatchNorm",
    "ParamGradMeanOverPositionsBatchNorm",
    "EvalTrainBackwardBatchNorm",
    "OnePassRecomputeBackwardBatchNorm",
    "InputDtypeRecomputeBackwardBatchNorm",
]


# =========================================================================== forward bugs


class UnbiasedVarianceBatchNorm(BatchNormOps):
    """Bug: normalises with the unbiased (m-1) variance, because ``torch.var`` is unbiased by default.

    Bug class B2 (unbiased estimator where the biased one is expected).
    Correct: normalise with the biased batch variance ``1/m sum (x - mu)^2``;
    the unbiased ``m/(m-1)`` form belongs only in the running estimate.
    The output is too small by ``sqrt((m-1)/m)``: visible for small batches.
    """

    def _train_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        xf = x.to(compute_dtype(x.dtype))
        dims, m = reduce_dims(x), values_per_channel(x)
        mean = xf.mean(dims)
        var = xf.var(dims)  # unbiased: divides by m - 1
        xhat = (xf - per_channel(mean, xf)) * per_channel(torch.rsqrt(var + self.eps), xf)
        # The base class folds m/(m-1) into the running estimate; hand it the biased
        # variance so that the running statistics stay right (the bug is the normalisation).
        return self._affine(xhat).to(x.dtype), mean, var * ((m - 1) / m)


class HardcodedEpsBatchNorm(BatchNormOps):
    """Bug: eps is a compile-time constant of the ported kernel, so the module's ``eps`` is ignored.

    Bug class B5 (wrong epsilon when porting).  The Triton kernel this was
    ported from takes ``EPS: tl.constexpr = 1e-5`` and the wrapper never
    passes ``self.eps``.  Right for the default eps, wrong for any other.
    Correct: ``1 / sqrt(var + self.eps)``, in training and in eval.
    """

    KERNEL_EPS = 1e-5

    def _train_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        xf = x.to(compute_dtype(x.dtype))
        mean, var, _invstd, xhat = batch_statistics(xf, self.KERNEL_EPS)
        return self._affine(xhat).to(x.dtype), mean, var

    def _eval_forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.to(compute_dtype(x.dtype))
        invstd = torch.rsqrt(self.running_var.to(xf.dtype) + self.KERNEL_EPS)
        xhat = (xf - per_channel(self.running_mean.to(xf.dtype), xf)) * per_channel(invstd, xf)
        return self._affine(xhat).to(x.dtype)


class OnePassVarianceBatchNorm(BatchNormOps):
    """Bug: one-pass variance ``E[x^2] - E[x]^2`` in the input dtype (Flax's ``use_fast_variance``).

    Bug class B14 (catastrophic cancellation).  Both moments come from one
    read of the input, clamped at 0 as Flax does; for a channel whose
    ``|mean|/std`` is large the two terms cancel and float32 keeps no correct
    digit of the variance.  Correct: two passes, ``mean(x)`` then
    ``mean((x - mean)^2)``.
    """

    def _train_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        xf = x.to(compute_dtype(x.dtype))
        dims = reduce_dims(x)
        mean = xf.mean(dims)
        var = ((xf * xf).mean(dims) - mean * mean).clamp_min(0)
        xhat = (xf - per_channel(mean, xf)) * per_channel(torch.rsqrt(var + self.eps), xf)
        return self._affine(xhat).to(x.dtype), mean, var


def _as_if_contiguous(x: torch.Tensor) -> torch.Tensor:
    """What a kernel indexing ``x_ptr + ((n * C + c) * HW + hw)`` reads: the storage in NCHW order."""
    strides, step = [], 1
    for size in reversed(x.shape):
        strides.append(step)
        step *= size
    return x.as_strided(x.shape, tuple(reversed(strides)), x.storage_offset())


class IgnoresStridesBatchNorm(BatchNormOps):
    """Bug: the kernel reads the input through its data pointer with contiguous NCHW offsets.

    Bug class B18 (channels_last / strides mis-read).  The wrapper hands
    ``x.data_ptr()`` to a kernel that computes ``((n*C + c)*HW + hw)``
    offsets, without ``x.contiguous()`` and without looking at
    ``x.stride()``: right for contiguous input, garbage for channels_last,
    transposed or sliced views.  Correct: index with the tensor's strides
    (or call ``.contiguous()`` first).
    """

    def _train_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return super()._train_forward(_as_if_contiguous(x))

    def _eval_forward(self, x: torch.Tensor) -> torch.Tensor:
        return super()._eval_forward(_as_if_contiguous(x))


class FlattenRowsBatchNorm(BatchNormOps):
    """Bug: reuses a ``(rows, C)`` BatchNorm1d kernel for conv features via ``x.reshape(-1, C)``.

    Bug class B18 (channel axis mistaken).  Reshaping ``(N, C, H, W)`` to
    ``(-1, C)`` without moving the channel axis last first mixes channels
    and positions, so the "channel" statistics are of arbitrary strided
    slices.  Right for 2-D input only.  Correct:
    ``x.movedim(1, -1).reshape(-1, C)`` (and the inverse on the way out), or
    reduce over every axis but 1.
    """

    def _train_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = x.reshape(-1, x.shape[1]).to(compute_dtype(x.dtype))
        mean, var, _invstd, xhat = batch_statistics(rows, self.eps)
        return self._affine(xhat).reshape(x.shape).to(x.dtype), mean, var

    def _eval_forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[1]).to(compute_dtype(x.dtype))
        invstd = torch.rsqrt(self.running_var.to(rows.dtype) + self.eps)
        xhat = (rows - self.running_mean.to(rows.dtype)) * invstd
        return self._affine(xhat).reshape(x.shape).to(x.dtype)


class PerPositionStatsBatchNorm(BatchNormOps):
    """Bug: statistics over the batch axis only (the fully-connected formula), one per (C, H, W) position.

    Seed 002 writes the forward for an ``(N, D)`` matrix, ``mu = 1/m sum_i x_i``
    over rows; applied to ``(N, C, *)`` input this normalises every spatial
    position separately.  To fill the ``(C,)`` buffers the per-position
    statistics are averaged over positions.  Right for 2-D input only.
    Correct: for conv features the spatial positions of a channel are samples
    too; reduce over axis 0 and every spatial axis.
    """

    def _train_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        xf = x.to(compute_dtype(x.dtype))
        mean = xf.mean(0, keepdim=True)
        xmu = xf - mean
        var = (xmu * xmu).mean(0, keepdim=True)
        xhat = xmu * torch.rsqrt(var + self.eps)
        c = x.shape[1]
        return self._affine(xhat).to(x.dtype), mean.reshape(c, -1).mean(1), var.reshape(c, -1).mean(1)


class Float32OutputBatchNorm(BatchNormOps):
    """Bug: computes in float32 and returns the float32 buffer, whatever the input dtype.

    Output contract (not in the B-list).  The kernel allocates its output with
    ``torch.empty(x.shape, dtype=torch.float32)`` because it accumulates in
    float32; float16/bfloat16/float64 input gets a float32 result (and
    float64 input loses its precision).  Correct: statistics in float32 for
    16-bit input, but the output in the input's dtype (``y.to(x.dtype)``).
    """

    def _train_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, var, _invstd, xhat = batch_statistics(x.float(), self.eps)
        return self._affine(xhat), mean, var

    def _eval_forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        invstd = torch.rsqrt(self.running_var.float() + self.eps)
        xhat = (xf - per_channel(self.running_mean.float(), xf)) * per_channel(invstd, xf)
        return self._affine(xhat)


class InPlaceInputBatchNorm(BatchNormOps):
    """Bug: when no gradient is needed it normalises the input tensor in place "to save memory".

    Output contract (not in the B-list; the in-place-ABN idea without its
    safeguards).  With autograd off or an input that does not require grad,
    it runs ``x.sub_(mean).mul_(invstd)...`` and returns ``x`` itself: the
    output values are right, but the caller's input is overwritten.
    Correct: never write into the input; allocate the output.
    """

    def _train_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if torch.is_grad_enabled() and x.requires_grad:
            return super()._train_forward(x)
        mean, var, invstd, _xhat = batch_statistics(x.to(compute_dtype(x.dtype)), self.eps)
        return self._affine_(x.sub_(per_channel(mean, x)).mul_(per_channel(invstd, x))), mean, var

    def _eval_forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return super()._eval_forward(x)
        invstd = torch.rsqrt(self.running_var.to(compute_dtype(x.dtype)) + self.eps)
        return self._affine_(x.sub_(per_channel(self.running_mean, x)).mul_(per_channel(invstd, x)))

    def _affine_(self, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if self.weight is not None:
                y.mul_(per_channel(self.weight, y))
            if self.bias is not None:
                y.add_(per_channel(self.bias, y))
        return y


class EvalBatchStatsBatchNorm(BatchNormOps):
    """Bug: eval mode still normalises with the batch statistics; the running ones are never read.

    Bug class B7.  The author updates the running statistics in training
    (for checkpoint compatibility) but ``forward`` never looks at
    ``self.training`` when normalising, so eval output depends on the rest
    of the batch and ignores the stored statistics.  Correct: in eval,
    ``gamma (x - running_mean) / sqrt(running_var + eps) + beta``, whose
    gradient is ``gamma / sqrt(running_var + eps) dy``.
    """

    def _eval_forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _mean, _var = self._train_forward(x)
        return y


class EvalEpsOutsideSqrtBatchNorm(BatchNormOps):
    """Bug: the inference path divides by ``sqrt(running_var) + eps`` (eps outside the sqrt).

    Bug class B23 (eps placement in the inference path, as in chainer #2214).
    Training uses ``rsqrt(var + eps)`` correctly; the separately written
    inference path does not, so train and eval disagree by an amount that
    grows with eps.  Correct: ``1 / sqrt(running_var + eps)``.
    """

    def _eval_forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.to(compute_dtype(x.dtype))
        inv = 1.0 / (self.running_var.to(xf.dtype).sqrt() + self.eps)
        xhat = (xf - per_channel(self.running_mean.to(xf.dtype), xf)) * per_channel(inv, xf)
        return self._affine(xhat).to(x.dtype)


# =========================================================================== backward bugs
#
# Each Function below keeps BatchNormTrainFunction's (correct) forward and
# replaces its hand-written backward.


def _recompute(ctx: Any, dy: torch.Tensor):
    """Saved input, weight and the compute-dtype views a hand-written backward starts from."""
    x, weight = ctx.saved_tensors
    acc = compute_dtype(x.dtype)
    return x, weight, x.to(acc), dy.to(acc), acc


def _grads(x: torch.Tensor, weight: torch.Tensor | None, dx: torch.Tensor, dgamma: torch.Tensor, dbeta: torch.Tensor):
    if weight is None:
        return dx.to(x.dtype), None, None, None
    return dx.to(x.dtype), dgamma.to(weight.dtype), dbeta.to(weight.dtype), None


class StatsAsConstantsFunction(BatchNormTrainFunction):
    """Backward that treats the batch mean and variance as constants: ``dx = gamma * invstd * dy``."""

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor, _dmean: Any, _dvar: Any):
        x, weight, xf, g, acc = _recompute(ctx, dy)
        dims = reduce_dims(x)
        _mean, _var, invstd, xhat = batch_statistics(xf, ctx.eps)
        scale = invstd if weight is None else weight.to(acc) * invstd
        dx = g * per_channel(scale, xf)
        return _grads(x, weight, dx, (g * xhat).sum(dims), g.sum(dims))


class StatsAsConstantsBatchNorm(BatchNorm):
    """Bug: the hand-written backward treats the batch mean and variance as constants.

    Bug class B24.  ``dx = gamma / sqrt(var + eps) * dy`` is the eval-mode
    gradient; in training ``mu`` and ``var`` depend on every ``x_i``, which
    adds the two correction terms.  ``dgamma``/``dbeta`` are right, and so is
    any check with ``loss = sum(y)`` (B27).  Correct:
    ``dx = gamma * invstd * (dy - mean(dy) - xhat * mean(dy * xhat))``.
    """

    train_function = StatsAsConstantsFunction


class NoVarianceTermFunction(BatchNormTrainFunction):
    """Backward that keeps the mean's correction term but drops the variance's."""

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor, _dmean: Any, _dvar: Any):
        x, weight, xf, g, acc = _recompute(ctx, dy)
        dims, m = reduce_dims(x), values_per_channel(x)
        _mean, _var, invstd, xhat = batch_statistics(xf, ctx.eps)
        dbeta = g.sum(dims)
        scale = invstd if weight is None else weight.to(acc) * invstd
        dx = per_channel(scale, xf) * (g - per_channel(dbeta / m, xf))
        return _grads(x, weight, dx, (g * xhat).sum(dims), dbeta)


class NoVarianceTermBatchNorm(BatchNorm):
    """Bug: the backward differentiates through the batch mean but not through the batch variance.

    Bug class B24.  ``dx = gamma * invstd * (dy - mean(dy))`` (centred, so
    ``sum dx = 0`` still holds and looks plausible) misses
    ``- xhat * mean(dy * xhat)``, the path through ``var``.  Correct: keep
    both correction terms.
    """

    train_function = NoVarianceTermFunction


class BesselGradFunction(BatchNormTrainFunction):
    """Backward whose variance term divides by ``m - 1`` instead of ``m``."""

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor, _dmean: Any, _dvar: Any):
        x, weight, xf, g, acc = _recompute(ctx, dy)
        dims, m = reduce_dims(x), values_per_channel(x)
        _mean, _var, invstd, xhat = batch_statistics(xf, ctx.eps)
        dbeta = g.sum(dims)
        dgamma = (g * xhat).sum(dims)
        scale = invstd if weight is None else weight.to(acc) * invstd
        dx = per_channel(scale, xf) * (g - per_channel(dbeta / m, xf) - xhat * per_channel(dgamma / (m - 1), xf))
        return _grads(x, weight, dx, dgamma, dbeta)


class BesselGradBatchNorm(BatchNorm):
    """Bug: the variance derivative uses ``1/(m-1)`` (the Bessel-corrected estimator's) instead of ``1/m``.

    Bug class B24.  The forward normalises with the biased variance, but the
    author derived ``dvar/dx_i = 2 (x_i - mu) / (m - 1)`` from the unbiased
    formula they had in mind for the running statistics.  Wrong by a factor
    ``m/(m-1)`` in one term: large for small batches.  Correct: ``2 (x_i - mu) / m``.
    """

    train_function = BesselGradFunction


class ParamGradMeanOverPositionsFunction(BatchNormTrainFunction):
    """Backward whose ``dgamma``/``dbeta`` sum over the batch but average over spatial positions."""

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor, _dmean: Any, _dvar: Any):
        x, weight, xf, g, acc = _recompute(ctx, dy)
        dims, m, c = reduce_dims(x), values_per_channel(x), x.shape[1]
        _mean, _var, invstd, xhat = batch_statistics(xf, ctx.eps)
        scale = invstd if weight is None else weight.to(acc) * invstd
        dx = per_channel(scale, xf) * (
            g - per_channel(g.sum(dims) / m, xf) - xhat * per_channel((g * xhat).sum(dims) / m, xf)
        )
        dgamma = (g * xhat).sum(0).reshape(c, -1).mean(1)
        dbeta = g.sum(0).reshape(c, -1).mean(1)
        return _grads(x, weight, dx, dgamma, dbeta)


class ParamGradMeanOverPositionsBatchNorm(BatchNorm):
    """Bug: ``dgamma``/``dbeta`` are summed over the batch axis but averaged over spatial positions.

    Bug class B24 (wrong dgamma/dbeta).  The reduction kernel sums over
    ``N`` and then, as the forward's mean does, divides by ``H*W``: the
    parameter gradients are too small by the number of positions (right for
    2-D input only).  ``dx`` is right.  Correct: ``gamma`` multiplies every
    position, so sum over ``N`` and every spatial axis.
    """

    train_function = ParamGradMeanOverPositionsFunction


class EvalTrainBackwardFunction(BatchNormEvalFunction):
    """Eval-mode backward that reuses the training backward's formula on the running statistics."""

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor):
        x, weight, running_mean, running_var = ctx.saved_tensors
        acc = compute_dtype(x.dtype)
        xf, g = x.to(acc), dy.to(acc)
        dims, m = reduce_dims(x), values_per_channel(x)
        invstd = torch.rsqrt(running_var.to(acc) + ctx.eps)
        xhat = (xf - per_channel(running_mean.to(acc), xf)) * per_channel(invstd, xf)
        dbeta = g.sum(dims)
        dgamma = (g * xhat).sum(dims)
        scale = invstd if weight is None else weight.to(acc) * invstd
        dx = per_channel(scale, xf) * (g - per_channel(dbeta / m, xf) - xhat * per_channel(dgamma / m, xf))
        if weight is None:
            return dx.to(x.dtype), None, None, None, None, None
        return dx.to(x.dtype), dgamma.to(weight.dtype), dbeta.to(weight.dtype), None, None, None


class EvalTrainBackwardBatchNorm(BatchNorm):
    """Bug: in eval mode the backward still subtracts the batch-statistics correction terms.

    Bug class B24 (in eval).  The kernel author launched the one backward
    kernel they had for both modes; in eval the normalising statistics are
    the running ones, constants, so ``dx = gamma / sqrt(running_var + eps) * dy``
    and there is nothing to subtract.  The eval forward and the whole
    training path are right.
    """

    eval_function = EvalTrainBackwardFunction


class OnePassRecomputeFunction(BatchNormTrainFunction):
    """Backward that recomputes the statistics with the one-pass ``E[x^2] - E[x]^2`` formula."""

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor, _dmean: Any, _dvar: Any):
        x, weight, xf, g, acc = _recompute(ctx, dy)
        dims, m = reduce_dims(x), values_per_channel(x)
        mean = xf.mean(dims)
        var = ((xf * xf).mean(dims) - mean * mean).clamp_min(0)
        invstd = torch.rsqrt(var + ctx.eps)
        xhat = (xf - per_channel(mean, xf)) * per_channel(invstd, xf)
        dbeta = g.sum(dims)
        dgamma = (g * xhat).sum(dims)
        scale = invstd if weight is None else weight.to(acc) * invstd
        dx = per_channel(scale, xf) * (g - per_channel(dbeta / m, xf) - xhat * per_channel(dgamma / m, xf))
        return _grads(x, weight, dx, dgamma, dbeta)


class OnePassRecomputeBackwardBatchNorm(BatchNorm):
    """Bug: the backward recomputes mean and variance in one pass (``E[x^2] - E[x]^2``) instead of saving them.

    Bug class B14, in the backward.  To save memory the forward stores only
    ``x``; the backward kernel re-derives the statistics with a single fused
    read, which cancels catastrophically in float32 when ``|mean|/std`` is
    large, so ``xhat``, ``invstd`` and all three gradients are wrong there
    while the (two-pass) forward is right.  Correct: save ``mean``/``invstd``
    from the forward, or recompute them with two passes.
    """

    train_function = OnePassRecomputeFunction


class InputDtypeRecomputeFunction(BatchNormTrainFunction):
    """Backward that recomputes the batch statistics from ``x`` in ``x``'s own dtype (two passes)."""

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor, _dmean: Any, _dvar: Any):
        x, weight, xf, g, acc = _recompute(ctx, dy)
        dims, m = reduce_dims(x), values_per_channel(x)
        mean = x.sum(dims) / m  # kept in x.dtype: a float16 sum past 65504 is inf
        xmu = x - per_channel(mean, x)
        var = (xmu * xmu).sum(dims) / m
        invstd = torch.rsqrt(var.to(acc) + ctx.eps)
        xhat = xmu.to(acc) * per_channel(invstd, xf)
        dbeta = g.sum(dims)
        dgamma = (g * xhat).sum(dims)
        scale = invstd if weight is None else weight.to(acc) * invstd
        dx = per_channel(scale, xf) * (g - per_channel(dbeta / m, xf) - xhat * per_channel(dgamma / m, xf))
        return _grads(x, weight, dx, dgamma, dbeta)


class InputDtypeRecomputeBackwardBatchNorm(BatchNorm):
    """Bug: the backward re-derives mean and variance from ``x`` without upcasting 16-bit input.

    Bug class B16, in the backward.  The forward computes its statistics in
    float32, but the backward kernel recomputes them from the saved input in
    the input's dtype; for float16 with thousands of values of magnitude ~30
    the sum passes 65504 and becomes inf, so every gradient is NaN, while
    float32/float64 inputs are exact.  Correct: save mean/invstd from the
    forward, or recompute in float32 for 16-bit input.
    """

    train_function = InputDtypeRecomputeFunction
