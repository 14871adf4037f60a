"""Correct batch-norm implementations, one per target kind.

* ``Cs231nBatchNorm`` (kind ``numpy-cs231n``): the cs231n assignment API,
  two-pass statistics in float64, output in the input dtype, cs231n
  convention for the running statistics (``r = momentum r + (1 - momentum) b``,
  biased variance, momentum 0.9).  Also offers ``spatial_batchnorm_*`` for
  ``(N, C, H, W)`` input, as the assignment does.
* ``batch_norm`` (kind ``torch-functional``): ``torch.nn.functional.batch_norm``
  in plain torch ops, two-pass, statistics in float32 for 16-bit input.
* ``BatchNorm`` (kind ``torch-module``): ``torch.nn.BatchNorm2d``'s interface
  for input of any rank >= 2, with a hand-written ``torch.autograd.Function``
  backward (the closed form of ``reference.batchnorm.backward``).
* ``BatchNormOps`` (kind ``torch-module``): the same module in plain torch
  ops with autograd's backward.

The buggy modules of the gallery subclass these, so everything but the bug
is this code.  All of them agree with ``reference/batchnorm.py`` to rounding
(``test_gallery_sanity`` holds them to it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "compute_dtype",
    "reduce_dims",
    "per_channel",
    "values_per_channel",
    "batch_statistics",
    "update_running_stats_",
    "batch_norm",
    "BatchNormTrainFunction",
    "BatchNormEvalFunction",
    "BatchNormModuleBase",
    "BatchNormOps",
    "BatchNorm",
    "param_or_fill",
    "running_or_zeros",
    "Cs231nBatchNorm",
]

# --------------------------------------------------------------------------- torch helpers


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics of 16-bit input are computed in float32 (as torch's kernels do)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def reduce_dims(x: torch.Tensor) -> list[int]:
    """Every axis but the channel axis 1."""
    return [0, *range(2, x.dim())]


def per_channel(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a ``(C,)`` vector to broadcast against ``like`` of shape ``(N, C, *)``."""
    return v.reshape(1, -1, *([1] * (like.dim() - 2)))


def values_per_channel(x: torch.Tensor) -> int:
    return x.numel() // x.shape[1] if x.shape[1] else 0


def batch_statistics(
    xf: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two-pass per-channel ``(mean, biased var, invstd, xhat)`` of ``xf`` (already in the compute dtype)."""
    dims = reduce_dims(xf)
    mean = xf.mean(dims)
    xmu = xf - per_channel(mean, xf)
    var = (xmu * xmu).mean(dims)
    invstd = torch.rsqrt(var + eps)
    return mean, var, invstd, xmu * per_channel(invstd, xf)


def update_running_stats_(
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
    m: int,
    momentum: float,
) -> None:
    """torch convention, in place: ``r = (1 - momentum) r + momentum b``, variance folded in unbiased."""
    with torch.no_grad():
        unbiased = var.detach() * (m / (m - 1))
        running_mean.mul_(1 - momentum).add_(mean.detach().to(running_mean.dtype), alpha=momentum)
        running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)


def _check_training_input(x: torch.Tensor) -> int:
    m = values_per_channel(x)
    if m <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)}")
    return m


# --------------------------------------------------------------------------- torch-functional


def batch_norm(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Correct ``torch.nn.functional.batch_norm`` in plain torch ops.

    Training: ``y = gamma (x - mu_B) / sqrt(sigma_B^2 + eps) + beta`` with the
    two-pass batch mean and biased variance (float32 for 16-bit input), and
    the running buffers, when given, updated in place with the unbiased
    variance.  Eval: the same with the running statistics.  The output has
    the input's dtype; autograd provides the backward.
    """
    if input.dim() < 2:
        raise ValueError(f"expected input of rank >= 2 (N, C, ...), got shape {tuple(input.shape)}")
    acc = compute_dtype(input.dtype)
    x = input.to(acc)
    if training:
        m = _check_training_input(input)
        mean, var, invstd, xhat = batch_statistics(x, eps)
        if running_mean is not None and running_var is not None:
            update_running_stats_(running_mean, running_var, mean, var, m, momentum)
    else:
        if running_mean is None or running_var is None:
            raise ValueError("running_mean and running_var must be given in eval mode")
        invstd = torch.rsqrt(running_var.to(acc) + eps)
        xhat = (x - per_channel(running_mean.to(acc), x)) * per_channel(invstd, x)
    y = xhat
    if weight is not None:
        y = y * per_channel(weight.to(acc), x)
    if bias is not None:
        y = y + per_channel(bias.to(acc), x)
    return y.to(input.dtype)


# --------------------------------------------------------------------------- custom autograd Functions


def _param_grad(grad: torch.Tensor, param: torch.Tensor | None) -> torch.Tensor | None:
    return None if param is None else grad.to(param.dtype)


class BatchNormTrainFunction(torch.autograd.Function):
    """Training-mode batch norm with a hand-written backward.

    ``forward(x, weight, bias, eps) -> (y, mean, var)``; ``mean`` and the
    biased ``var`` are returned for the running-statistics update and are not
    differentiable.  The backward recomputes ``xhat`` from the saved input
    (so that a double backward is correct too) and applies the closed form::

        dbeta  = sum dy
        dgamma = sum dy * xhat
        dx     = gamma * invstd * (dy - dbeta/m - xhat * dgamma/m)
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float):
        acc = compute_dtype(x.dtype)
        xf = x.to(acc)
        mean, var, _invstd, xhat = batch_statistics(xf, eps)
        y = xhat
        if weight is not None:
            y = y * per_channel(weight.to(acc), xf)
        if bias is not None:
            y = y + per_channel(bias.to(acc), xf)
        ctx.save_for_backward(x, weight)
        ctx.eps = eps
        ctx.mark_non_differentiable(mean, var)
        return y.to(x.dtype), mean, var

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor, _dmean: Any, _dvar: Any):
        x, weight = ctx.saved_tensors
        acc = compute_dtype(x.dtype)
        xf, g = x.to(acc), dy.to(acc)
        dims, m = reduce_dims(x), values_per_channel(x)
        _mean, _var, invstd, xhat = batch_statistics(xf, ctx.eps)
        dbeta = g.sum(dims)
        dgamma = (g * xhat).sum(dims)
        scale = invstd if weight is None else weight.to(acc) * invstd
        dx = per_channel(scale, xf) * (g - per_channel(dbeta / m, xf) - xhat * per_channel(dgamma / m, xf))
        return dx.to(x.dtype), _param_grad(dgamma, weight), _param_grad(dbeta, weight), None


class BatchNormEvalFunction(torch.autograd.Function):
    """Eval-mode batch norm with a hand-written backward.

    The running statistics are constants, so the map is affine per channel::

        y = gamma * (x - running_mean) * invstd + beta,  invstd = 1/sqrt(running_var + eps)
        dx = gamma * invstd * dy,  dgamma = sum dy * xhat,  dbeta = sum dy
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        running_mean: torch.Tensor,
        running_var: torch.Tensor,
        eps: float,
    ) -> torch.Tensor:
        acc = compute_dtype(x.dtype)
        xf = x.to(acc)
        invstd = torch.rsqrt(running_var.to(acc) + eps)
        y = (xf - per_channel(running_mean.to(acc), xf)) * per_channel(invstd, xf)
        if weight is not None:
            y = y * per_channel(weight.to(acc), xf)
        if bias is not None:
            y = y + per_channel(bias.to(acc), xf)
        ctx.save_for_backward(x, weight, running_mean, running_var)
        ctx.eps = eps
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor):
        x, weight, running_mean, running_var = ctx.saved_tensors
        acc = compute_dtype(x.dtype)
        xf, g = x.to(acc), dy.to(acc)
        dims = reduce_dims(x)
        invstd = torch.rsqrt(running_var.to(acc) + ctx.eps)
        xhat = (xf - per_channel(running_mean.to(acc), xf)) * per_channel(invstd, xf)
        scale = invstd if weight is None else weight.to(acc) * invstd
        dx = g * per_channel(scale, xf)
        dgamma = (g * xhat).sum(dims)
        dbeta = g.sum(dims)
        return dx.to(x.dtype), _param_grad(dgamma, weight), _param_grad(dbeta, weight), None, None, None


# --------------------------------------------------------------------------- torch-module


class BatchNormModuleBase(nn.Module):
    """``torch.nn.BatchNorm2d``'s constructor, parameters, buffers and mode logic, for any rank >= 2.

    Subclasses provide ``_train_forward(x) -> (y, mean, biased var)`` and
    ``_eval_forward(x) -> y``; this class does the bookkeeping exactly as
    torch does: ``num_batches_tracked``, ``momentum=None`` as a cumulative
    average, batch statistics in eval when ``track_running_stats=False``.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features, **kw))
            self.bias = nn.Parameter(torch.zeros(num_features, **kw))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **kw))
            self.register_buffer("running_var", torch.ones(num_features, **kw))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
            f"track_running_stats={self.track_running_stats}"
        )

    def _momentum_factor(self) -> float:
        if self.momentum is None:
            return 1.0 / float(self.num_batches_tracked)
        return float(self.momentum)

    def _train_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} is a base class: subclasses define the training forward")

    def _eval_forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} is a base class: subclasses define the eval forward")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.dim() < 2:
            raise ValueError(f"expected input of rank >= 2 (N, C, ...), got shape {tuple(input.shape)}")
        if input.shape[1] != self.num_features:
            raise ValueError(f"expected {self.num_features} channels on axis 1, got shape {tuple(input.shape)}")
        if self.training or self.running_mean is None:
            m = _check_training_input(input)
            y, mean, var = self._train_forward(input)
            if self.training and self.track_running_stats:
                self.num_batches_tracked.add_(1)
                update_running_stats_(self.running_mean, self.running_var, mean, var, m, self._momentum_factor())
            return y
        return self._eval_forward(input)


class BatchNormOps(BatchNormModuleBase):
    """Correct batch-norm module in plain torch ops; autograd provides the backward.

    Two-pass statistics in the compute dtype (float32 for 16-bit input),
    output in the input dtype; strides and memory formats are whatever torch
    ops make of them, so channels_last and non-contiguous input work.
    """

    def _affine(self, xhat: torch.Tensor) -> torch.Tensor:
        y = xhat
        if self.weight is not None:
            y = y * per_channel(self.weight.to(xhat.dtype), xhat)
        if self.bias is not None:
            y = y + per_channel(self.bias.to(xhat.dtype), xhat)
        return y

    def _train_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        xf = x.to(compute_dtype(x.dtype))
        mean, var, _invstd, xhat = batch_statistics(xf, self.eps)
        return self._affine(xhat).to(x.dtype), mean, var

    def _eval_forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.to(compute_dtype(x.dtype))
        invstd = torch.rsqrt(self.running_var.to(xf.dtype) + self.eps)
        xhat = (xf - per_channel(self.running_mean.to(xf.dtype), xf)) * per_channel(invstd, xf)
        return self._affine(xhat).to(x.dtype)


class BatchNorm(BatchNormModuleBase):
    """Correct batch-norm module whose backward is hand-written (``torch.autograd.Function``).

    ``train_function`` and ``eval_function`` are class attributes so that a
    kernel port can swap in its own backward (the gallery's backward bugs do).
    """

    train_function: type[torch.autograd.Function] = BatchNormTrainFunction
    eval_function: type[torch.autograd.Function] = BatchNormEvalFunction

    def _train_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.train_function.apply(x, self.weight, self.bias, self.eps)

    def _eval_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.eval_function.apply(x, self.weight, self.bias, self.running_mean, self.running_var, self.eps)


# --------------------------------------------------------------------------- numpy-cs231n


def param_or_fill(p: np.ndarray | None, d: int, fill: float) -> np.ndarray:
    """``gamma``/``beta`` as float64, or ``fill`` when the caller passed None."""
    return np.full(d, fill) if p is None else np.asarray(p, dtype=np.float64)


def running_or_zeros(bn_param: dict[str, Any], key: str, d: int, dtype: np.dtype) -> np.ndarray:
    """A running statistic from ``bn_param``, zeros of ``dtype`` when absent (the cs231n default)."""
    r = bn_param.get(key)
    return np.zeros(d, dtype=dtype) if r is None else np.asarray(r)


class Cs231nBatchNorm:
    """Correct cs231n batch norm (``layers.py`` of assignment 2) in numpy.

    Train mode: two-pass mean and biased variance in float64 (whatever the
    input dtype), ``xhat = (x - mu) / sqrt(var + eps)``, ``out = gamma xhat +
    beta`` cast back to the input dtype, and the cs231n running averages
    ``r = momentum r + (1 - momentum) b`` (biased variance) stored back into
    ``bn_param`` in their own dtype.  Test mode: the running statistics in
    place of the batch's.  The backward handles both modes (in test mode the
    statistics are constants, so ``dx = gamma / sqrt(running_var + eps) dout``).

    Methods are classmethods so that the spatial variants go through the
    (possibly overridden) 2-D ones, as the assignment's do.
    """

    @classmethod
    def batchnorm_forward(
        cls, x: np.ndarray, gamma: np.ndarray | None, beta: np.ndarray | None, bn_param: dict[str, Any]
    ) -> tuple[np.ndarray, dict[str, Any]]:
        mode = bn_param["mode"]
        eps = bn_param.get("eps", 1e-5)
        momentum = bn_param.get("momentum", 0.9)
        _n, d = x.shape
        running_mean = running_or_zeros(bn_param, "running_mean", d, x.dtype)
        running_var = running_or_zeros(bn_param, "running_var", d, x.dtype)
        xf = x.astype(np.float64)
        g, b = param_or_fill(gamma, d, 1.0), param_or_fill(beta, d, 0.0)
        if mode == "train":
            mu = xf.mean(axis=0)
            xmu = xf - mu
            var = (xmu**2).mean(axis=0)
            ivar = 1.0 / np.sqrt(var + eps)
            xhat = xmu * ivar
            bn_param["running_mean"] = (momentum * running_mean + (1 - momentum) * mu).astype(running_mean.dtype)
            bn_param["running_var"] = (momentum * running_var + (1 - momentum) * var).astype(running_var.dtype)
        elif mode == "test":
            mu = running_mean.astype(np.float64)
            var = running_var.astype(np.float64)
            xmu = xf - mu
            ivar = 1.0 / np.sqrt(var + eps)
            xhat = xmu * ivar
        else:
            raise ValueError(f'Invalid forward batchnorm mode "{mode}"')
        out = g * xhat + b
        cache = {
            "mode": mode, "x": xf, "mu": mu, "xmu": xmu, "var": var, "ivar": ivar, "xhat": xhat,
            "gamma": g, "eps": eps, "dtype": x.dtype,
            "param_dtype": x.dtype if gamma is None else np.asarray(gamma).dtype,
        }
        return out.astype(x.dtype), cache

    @classmethod
    def batchnorm_backward(
        cls, dout: np.ndarray, cache: dict[str, Any]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        g = dout.astype(np.float64)
        xhat, ivar, gamma = cache["xhat"], cache["ivar"], cache["gamma"]
        dbeta = g.sum(axis=0)
        dgamma = (g * xhat).sum(axis=0)
        if cache["mode"] == "train":
            dx = gamma * ivar * (g - g.mean(axis=0) - xhat * (g * xhat).mean(axis=0))
        else:
            dx = gamma * ivar * g
        pdt = cache["param_dtype"]
        return dx.astype(cache["dtype"]), dgamma.astype(pdt), dbeta.astype(pdt)

    @classmethod
    def spatial_batchnorm_forward(
        cls, x: np.ndarray, gamma: np.ndarray | None, beta: np.ndarray | None, bn_param: dict[str, Any]
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """``(N, C, H, W)``: move channels last, flatten to ``(N*H*W, C)``, normalise, move back."""
        n, c, h, w = x.shape
        out, cache = cls.batchnorm_forward(x.transpose(0, 2, 3, 1).reshape(-1, c), gamma, beta, bn_param)
        return out.reshape(n, h, w, c).transpose(0, 3, 1, 2), cache

    @classmethod
    def spatial_batchnorm_backward(
        cls, dout: np.ndarray, cache: dict[str, Any]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n, c, h, w = dout.shape
        dx, dgamma, dbeta = cls.batchnorm_backward(dout.transpose(0, 2, 3, 1).reshape(-1, c), cache)
        return dx.reshape(n, h, w, c).transpose(0, 3, 1, 2), dgamma, dbeta
