"""Buggy batch norms whose causes ``bnverify.diagnose`` names (``tests/test_aspects.py``).

* ``NoTransposeSpatialBatchNorm``: a spatial batch norm that flattens (N, C, H, W) with
  ``x.reshape(-1, C)`` without moving channels last, so each "channel" mixes channels and positions;
* ``RowParamsBatchNorm``: weight and bias kept as ``(1, C)`` rows (the textbook shape that broadcasts
  against 2-D input) instead of ``torch.nn.BatchNorm2d``'s ``(C,)``;
* ``VarPlusEpsBatchNorm``: the running variance averages ``var + eps`` (the quantity under the square root).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tests.gallery.correct_aspects import _AspectBatchNorm

__all__ = ["NoTransposeSpatialBatchNorm", "RowParamsBatchNorm", "VarPlusEpsBatchNorm"]


class NoTransposeSpatialBatchNorm(_AspectBatchNorm):
    """I flatten the input to (N*H*W, C) with reshape and normalise its columns like BatchNorm1d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        flat = x.reshape(-1, c)  # bug: channels are not moved last first
        if self.training:
            mean = flat.mean(dim=0)
            var = ((flat - mean) ** 2).mean(dim=0)
            if self.running_mean is not None:
                with torch.no_grad():
                    m = flat.shape[0]
                    self.num_batches_tracked.add_(1)
                    w = 1.0 / float(self.num_batches_tracked) if self.momentum is None else float(self.momentum)
                    self.running_mean.mul_(1 - w).add_(mean.detach(), alpha=w)
                    self.running_var.mul_(1 - w).add_(var.detach() * m / max(m - 1, 1), alpha=w)
        else:
            mean, var = self.running_mean, self.running_var
        y = (flat - mean) / torch.sqrt(var + self.eps)
        if self.weight is not None:
            y = y * self.weight + self.bias
        return y.reshape(x.shape)


class RowParamsBatchNorm(_AspectBatchNorm):
    """My gamma and beta are (1, C) rows, as in the textbook's from-scratch batch norm."""

    def __init__(self, num_features: int, *args: Any, **kw: Any) -> None:
        super().__init__(num_features, *args, **kw)
        if self.affine:
            self.weight = nn.Parameter(self.weight.detach().reshape(1, -1).clone())
            self.bias = nn.Parameter(self.bias.detach().reshape(1, -1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight, self.bias
        if w is not None:
            self.weight, self.bias = nn.Parameter(w.reshape(-1)), nn.Parameter(b.reshape(-1))
        try:
            return super().forward(x)
        finally:
            if w is not None:
                self.weight, self.bias = w, b


class VarPlusEpsBatchNorm(_AspectBatchNorm):
    """I add eps to the batch variance once and use the sum for the output and the running average."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.running_mean is None:
            return super().forward(x)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        dims = [0] + list(range(2, x.dim()))
        m = x.numel() // x.shape[1]
        if m < 2:
            raise ValueError("Expected more than 1 value per channel when training")
        mean = x.mean(dim=dims)
        var_eps = ((x - mean.reshape(shape)) ** 2).mean(dim=dims) + self.eps
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            w = 1.0 / float(self.num_batches_tracked) if self.momentum is None else float(self.momentum)
            self.running_mean.mul_(1 - w).add_(mean.detach(), alpha=w)
            self.running_var.mul_(1 - w).add_(var_eps.detach() * m / (m - 1), alpha=w)  # bug: var + eps
        y = (x - mean.reshape(shape)) / torch.sqrt(var_eps).reshape(shape)
        if self.weight is not None:
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        return y
