"""Correct batch norms that differ from a named convention in one aspect (SPEC section 4).

Each passes ``bnverify check`` with the aspect's flag and fails without it, with the flag named
in the failure (``tests/test_aspects.py``):

* ``BiasedVarBatchNorm``: torch in every respect but the running variance, which averages the
  biased batch variance: ``--running-var biased``;
* ``Eps1e6BatchNorm``: torch with ``eps=1e-6`` as the constructor default: ``--eps 1e-6``;
* ``Momentum001BatchNorm``: torch with ``momentum=0.01`` as the default: ``--momentum 0.01``;
* ``DecayMomentumBatchNorm``: momentum as the decay of the old value with default 0.9 (the new
  batch weighs 0.1, as in torch): ``--momentum-meaning old-decay --momentum 0.9``;
* ``cs231n_eps_1e6``: the cs231n layer with ``bn_param.get("eps", 1e-6)``: ``--kind numpy-cs231n --eps 1e-6``.

Every module keeps ``torch.nn.BatchNorm2d``'s constructor signature and buffers, two-pass
statistics, and raises on one value per channel as torch does when its estimator is unbiased.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["BiasedVarBatchNorm", "Eps1e6BatchNorm", "Momentum001BatchNorm", "DecayMomentumBatchNorm",
           "cs231n_eps_1e6"]


class _AspectBatchNorm(nn.Module):
    """torch.nn.BatchNorm2d with its aspects as class attributes."""

    default_eps = 1e-5
    default_momentum: float | None = 0.1
    decay = False  # momentum is the decay of the old value
    unbiased = True  # running_var averages m/(m-1) times the batch variance

    def __init__(self, num_features: int, eps: float | None = None, momentum: Any = "default", affine: bool = True,
                 track_running_stats: bool = True, device: Any = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = self.default_eps if eps is None else eps
        self.momentum = self.default_momentum if isinstance(momentum, str) else momentum
        self.affine, self.track_running_stats = affine, track_running_stats
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
        shape = (1, -1) + (1,) * (x.dim() - 2)
        dims = [0] + list(range(2, x.dim()))
        if self.training or self.running_mean is None:
            m = x.numel() // x.shape[1]
            if self.training and m < 2 and self.unbiased:
                raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)}")
            mean = xf.mean(dim=dims)
            xmu = xf - mean.reshape(shape)
            var = (xmu * xmu).mean(dim=dims)
            if self.training and self.running_mean is not None:
                with torch.no_grad():
                    self.num_batches_tracked.add_(1)
                    if self.momentum is None:
                        w = 1.0 / float(self.num_batches_tracked)
                    else:
                        w = 1.0 - float(self.momentum) if self.decay else float(self.momentum)
                    v = var * m / (m - 1) if self.unbiased else var
                    self.running_mean.mul_(1 - w).add_(mean.detach().to(self.running_mean.dtype), alpha=w)
                    self.running_var.mul_(1 - w).add_(v.detach().to(self.running_var.dtype), alpha=w)
        else:
            xmu = xf - self.running_mean.to(acc).reshape(shape)
            var = self.running_var.to(acc)
        y = xmu * torch.rsqrt(var + self.eps).reshape(shape)
        if self.weight is not None:
            y = y * self.weight.to(acc).reshape(shape) + self.bias.to(acc).reshape(shape)
        return y.to(x.dtype)


class BiasedVarBatchNorm(_AspectBatchNorm):
    """torch, but running_var averages the biased batch variance (``--running-var biased``)."""

    unbiased = False


class Eps1e6BatchNorm(_AspectBatchNorm):
    """torch, with ``eps=1e-6`` by default (``--eps 1e-6``)."""

    default_eps = 1e-6


class Momentum001BatchNorm(_AspectBatchNorm):
    """torch, with ``momentum=0.01`` by default (``--momentum 0.01``)."""

    default_momentum = 0.01


class DecayMomentumBatchNorm(_AspectBatchNorm):
    """Momentum as the decay of the old value, default 0.9 (``--momentum-meaning old-decay --momentum 0.9``)."""

    default_momentum = 0.9
    decay = True


class _Cs231nEps1e6:
    """The cs231n layer (assignment 2) with its own default eps, 1e-6."""

    @staticmethod
    def batchnorm_forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                          bn_param: dict[str, Any]) -> tuple[np.ndarray, Any]:
        mode = bn_param["mode"]
        eps = bn_param.get("eps", 1e-6)
        momentum = bn_param.get("momentum", 0.9)
        d = x.shape[1]
        running_mean = bn_param.get("running_mean", np.zeros(d, dtype=x.dtype))
        running_var = bn_param.get("running_var", np.zeros(d, dtype=x.dtype))
        if mode == "train":
            mu = x.mean(axis=0)
            var = ((x - mu) ** 2).mean(axis=0)
            bn_param["running_mean"] = momentum * running_mean + (1 - momentum) * mu
            bn_param["running_var"] = momentum * running_var + (1 - momentum) * var
        elif mode == "test":
            mu, var = running_mean, running_var
        else:
            raise ValueError(f'Invalid forward batchnorm mode "{mode}"')
        xhat = (x - mu) / np.sqrt(var + eps)
        return (gamma * xhat + beta).astype(x.dtype), None


cs231n_eps_1e6 = _Cs231nEps1e6()
"""A module-like object with ``batchnorm_forward`` only (forward-checked, SPEC section 2)."""
