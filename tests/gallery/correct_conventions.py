"""Correct batch norms of the other conventions of SPEC section 4, each true to its framework's source.

* ``KerasBatchNorm``: ``keras/src/layers/normalization/batch_normalization.py``:
  ``momentum=0.99, epsilon=1e-3``; ``moving_mean * momentum + mean * (1 - momentum)``
  (the same for the variance); the variance from ``ops.moments`` (biased); inference
  normalises with the moving statistics.  Keras does not raise for one value per channel.
* ``FlaxBatchNorm``: ``flax/linen/normalization.py::BatchNorm``: ``momentum=0.99,
  epsilon=1e-5``; ``ra = momentum * ra + (1 - momentum) * batch``; biased variance.
  Flax's default ``use_fast_variance=True`` computes ``E[x^2] - E[x]^2``; this port uses
  ``use_fast_variance=False`` (two-pass), the option Flax offers for accuracy, because the
  forward suite rightly fails the one-pass variance on ill-conditioned input.
* ``Cs231nBatchNorm``: ``assignment2/cs231n/layers.py``: ``momentum`` default 0.9 as a
  decay, ``eps`` 1e-5, biased ``np.var``.

Each keeps ``torch.nn.BatchNorm2d``'s constructor signature and buffers (SPEC section 2,
kind ``torch-module``), with its own framework's defaults and update rule.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["KerasBatchNorm", "FlaxBatchNorm", "Cs231nBatchNorm"]


def _shape(x: torch.Tensor) -> tuple[int, ...]:
    return (1, -1) + (1,) * (x.dim() - 2)


class _DecayBatchNorm(nn.Module):
    """Batch norm whose momentum is the decay of the old running value, with a biased running variance."""

    default_eps = 1e-5
    default_momentum = 0.99

    def __init__(self, num_features: int, eps: float | None = None, momentum: float | None = None,
                 affine: bool = True, track_running_stats: bool = True, device: Any = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = self.default_eps if eps is None else eps
        self.momentum = self.default_momentum if momentum is None else momentum
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        acc = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        xf = x.to(acc)
        shape = _shape(x)
        if self.training or self.running_mean is None:
            dims = [0] + list(range(2, x.dim()))
            mean = xf.mean(dim=dims)
            xmu = xf - mean.reshape(shape)
            var = (xmu * xmu).mean(dim=dims)  # two-pass, biased (ops.moments)
            if self.training and self.running_mean is not None:
                with torch.no_grad():
                    d = float(self.momentum)
                    self.running_mean.mul_(d).add_(mean.detach().to(self.running_mean.dtype), alpha=1 - d)
                    self.running_var.mul_(d).add_(var.detach().to(self.running_var.dtype), alpha=1 - d)
                    self.num_batches_tracked.add_(1)
        else:
            mean = self.running_mean.to(acc)
            var = self.running_var.to(acc)
            xmu = xf - mean.reshape(shape)
        y = xmu * torch.rsqrt(var + self.eps).reshape(shape)
        if self.weight is not None:
            y = y * self.weight.to(acc).reshape(shape) + self.bias.to(acc).reshape(shape)
        return y.to(x.dtype)


class KerasBatchNorm(_DecayBatchNorm):
    """Keras 3 ``BatchNormalization``: momentum 0.99 (decay), epsilon 1e-3, biased moving variance."""

    default_eps = 1e-3
    default_momentum = 0.99


class FlaxBatchNorm(_DecayBatchNorm):
    """Flax linen ``BatchNorm(use_fast_variance=False)``: momentum 0.99 (decay), epsilon 1e-5, biased."""

    default_eps = 1e-5
    default_momentum = 0.99


class Cs231nBatchNorm:
    """cs231n ``batchnorm_forward``/``batchnorm_backward`` (assignment 2), on ``(N, D)`` input."""

    @staticmethod
    def batchnorm_forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                          bn_param: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        mode = bn_param["mode"]
        eps = bn_param.get("eps", 1e-5)
        momentum = bn_param.get("momentum", 0.9)
        d = x.shape[1]
        running_mean = bn_param.get("running_mean", np.zeros(d, dtype=x.dtype))
        running_var = bn_param.get("running_var", np.zeros(d, dtype=x.dtype))
        xf = x.astype(np.float64)
        if mode == "train":
            mu = xf.mean(axis=0)
            xmu = xf - mu
            var = (xmu**2).mean(axis=0)
            bn_param["running_mean"] = (momentum * running_mean + (1 - momentum) * mu).astype(running_mean.dtype)
            bn_param["running_var"] = (momentum * running_var + (1 - momentum) * var).astype(running_var.dtype)
        elif mode == "test":
            mu = running_mean.astype(np.float64)
            var = running_var.astype(np.float64)
            xmu = xf - mu
        else:
            raise ValueError(f'Invalid forward batchnorm mode "{mode}"')
        ivar = 1.0 / np.sqrt(var + eps)
        xhat = xmu * ivar
        out = gamma * xhat + beta
        return out.astype(x.dtype), {"mode": mode, "xhat": xhat, "ivar": ivar, "gamma": gamma, "dtype": x.dtype}

    @staticmethod
    def batchnorm_backward(dout: np.ndarray, cache: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        g = dout.astype(np.float64)
        xhat, ivar, gamma = cache["xhat"], cache["ivar"], cache["gamma"]
        dbeta = g.sum(axis=0)
        dgamma = (g * xhat).sum(axis=0)
        if cache["mode"] == "train":
            dx = gamma * ivar * (g - g.mean(axis=0) - xhat * (g * xhat).mean(axis=0))
        else:
            dx = gamma * ivar * g
        dt = cache["dtype"]
        return dx.astype(dt), dgamma.astype(np.asarray(gamma).dtype), dbeta.astype(np.asarray(gamma).dtype)
