"""Targets that misbehave as programs rather than as maths: the harness must report, not crash."""

from __future__ import annotations

import time

import torch
from torch import nn


class RaisesInForward(nn.BatchNorm2d):
    """Raises from inside forward, as a kernel launch with a bad grid would."""

    def forward(self, x):
        raise RuntimeError("CUDA error: invalid configuration argument (simulated)")


class ReturnsNaN(nn.BatchNorm2d):
    def forward(self, x):
        return torch.full_like(x, float("nan"))


class WrongShape(nn.BatchNorm2d):
    def forward(self, x):
        return super().forward(x).flatten(1)


class MutatesInput(nn.Module):
    """Normalises in place to save memory: the caller's tensor is overwritten."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 device=None, dtype=None):
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self.weight, self.bias = self.bn.weight, self.bn.bias

    @property
    def running_mean(self):
        return self.bn.running_mean

    @property
    def running_var(self):
        return self.bn.running_var

    def forward(self, x):
        out = self.bn(x)
        with torch.no_grad():
            x.mul_(0.5)
        return out


class Hangs(nn.BatchNorm2d):
    def forward(self, x):
        while True:
            time.sleep(0.05)


class OnlyRank2(nn.BatchNorm1d):
    """A kernel written for (N, C) input only; it says so for any other rank."""

    def forward(self, x):
        if x.dim() != 2:
            raise ValueError(f"expected 2D input (got {x.dim()}D input)")
        return super().forward(x)


def not_a_batchnorm(a, b):
    return a
