"""Buggy ``torch.nn.functional.batch_norm`` look-alikes (kind ``torch-functional``).

Each function has F.batch_norm's signature and is ``correct.batch_norm``
with one mistake; the running buffers are updated in place the correct way
(``correct.update_running_stats_``) from whatever statistics the function
computed.  Backward is autograd's through the (buggy) forward.
"""

from __future__ import annotations

import torch

from tests.gallery.correct import (
    batch_statistics,
    compute_dtype,
    per_channel,
    reduce_dims,
    update_running_stats_,
    values_per_channel,
)

__all__ = [
    "batch_norm_addcmul_swapped",
    "batch_norm_eps_outside_sqrt",
    "batch_norm_fp16_accumulation",
    "batch_norm_no_eps_in_training",
]


def _check(input: torch.Tensor, training: bool, running_mean, running_var) -> int:
    if input.dim() < 2:
        raise ValueError(f"expected input of rank >= 2 (N, C, ...), got shape {tuple(input.shape)}")
    m = values_per_channel(input)
    if training and m <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(input.shape)}")
    if not training and (running_mean is None or running_var is None):
        raise ValueError("running_mean and running_var must be given in eval mode")
    return m


def batch_norm_addcmul_swapped(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Bug: the affine step ``torch.addcmul(weight, xhat, bias)`` computes ``weight + xhat * bias``.

    Gamma and beta swapped (own class "affine-swap"; seed 002 steps 8-9).
    ``torch.addcmul(input, t1, t2)`` is ``input + t1 * t2``: the author meant
    ``beta + xhat * gamma`` and passed the parameters in the order they are
    named in the signature.  With the default gamma=1, beta=0 the output is
    the constant 1.  Normalisation and running statistics are right.
    Correct: ``torch.addcmul(bias, xhat, weight)``.
    """
    m = _check(input, training, running_mean, running_var)
    acc = compute_dtype(input.dtype)
    x = input.to(acc)
    if training:
        mean, var, _invstd, xhat = batch_statistics(x, eps)
        if running_mean is not None and running_var is not None:
            update_running_stats_(running_mean, running_var, mean, var, m, momentum)
    else:
        invstd = torch.rsqrt(running_var.to(acc) + eps)
        xhat = (x - per_channel(running_mean.to(acc), x)) * per_channel(invstd, x)
    if weight is not None and bias is not None:
        y = torch.addcmul(per_channel(weight.to(acc), x), xhat, per_channel(bias.to(acc), x))
    else:
        y = xhat
    return y.to(input.dtype)


def batch_norm_eps_outside_sqrt(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Bug: divides by ``std + eps`` (eps outside the square root), in both modes.

    Bug class B23 (eps placement).  ``(x - mu) / (sqrt(var) + eps)`` is the
    "add eps to the denominator" habit from other layers; it differs from
    ``(x - mu) / sqrt(var + eps)`` by about ``eps / sqrt(var)`` relative,
    which is visible for any eps other than a tiny one.  Correct:
    ``torch.rsqrt(var + eps)``.
    """
    m = _check(input, training, running_mean, running_var)
    acc = compute_dtype(input.dtype)
    x = input.to(acc)
    if training:
        dims = reduce_dims(x)
        mean = x.mean(dims)
        xmu = x - per_channel(mean, x)
        var = (xmu * xmu).mean(dims)
        if running_mean is not None and running_var is not None:
            update_running_stats_(running_mean, running_var, mean, var, m, momentum)
    else:
        xmu = x - per_channel(running_mean.to(acc), x)
        var = running_var.to(acc)
    y = xmu / per_channel(var.sqrt() + eps, x)
    if weight is not None:
        y = y * per_channel(weight.to(acc), x)
    if bias is not None:
        y = y + per_channel(bias.to(acc), x)
    return y.to(input.dtype)


def batch_norm_fp16_accumulation(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Bug: the sums of the statistics are accumulated in the input dtype, so float16 sums overflow.

    Bug class B16.  The port keeps its accumulators in ``x.dtype`` (a
    Triton ``tl.zeros([BLOCK], dtype=x.dtype)``), two-pass:
    ``sum(x) / m`` then ``sum((x - mean)^2) / m``.  For float16 a sum over a
    few thousand values of magnitude ~30 exceeds 65504 and becomes inf, and
    the output turns into NaN or 0.  Right for float32/float64.  Correct:
    accumulate 16-bit input in float32 (``x.float()``) and cast only the
    output back.
    """
    m = _check(input, training, running_mean, running_var)
    if training:
        dims = reduce_dims(input)
        mean = input.sum(dims) / m
        xmu = input - per_channel(mean, input)
        var = (xmu * xmu).sum(dims) / m
        if running_mean is not None and running_var is not None:
            update_running_stats_(running_mean, running_var, mean, var, m, momentum)
    else:
        xmu = input - per_channel(running_mean.to(input.dtype), input)
        var = running_var.to(input.dtype)
    y = xmu * per_channel(torch.rsqrt(var + eps), input)
    if weight is not None:
        y = y * per_channel(weight.to(input.dtype), input)
    if bias is not None:
        y = y + per_channel(bias.to(input.dtype), input)
    return y


def batch_norm_no_eps_in_training(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Bug: training normalises with ``1/sqrt(var)``; eps is added only in the eval path.

    Bug class B15 (constant channel).  The author believed eps only guards
    the running variance (initialised, or decayed, towards 0) and left it out
    of the batch path, so a constant channel gives ``0 * inf = NaN`` and a
    channel with variance near eps is amplified.  Correct: ``rsqrt(var + eps)``
    in training as well.
    """
    m = _check(input, training, running_mean, running_var)
    acc = compute_dtype(input.dtype)
    x = input.to(acc)
    if training:
        dims = reduce_dims(x)
        mean = x.mean(dims)
        xmu = x - per_channel(mean, x)
        var = (xmu * xmu).mean(dims)
        invstd = torch.rsqrt(var)
        if running_mean is not None and running_var is not None:
            update_running_stats_(running_mean, running_var, mean, var, m, momentum)
    else:
        xmu = x - per_channel(running_mean.to(acc), x)
        invstd = torch.rsqrt(running_var.to(acc) + eps)
    y = xmu * per_channel(invstd, x)
    if weight is not None:
        y = y * per_channel(weight.to(acc), x)
    if bias is not None:
        y = y + per_channel(bias.to(acc), x)
    return y.to(input.dtype)
