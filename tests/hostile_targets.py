"""Targets that misbehave as programs rather than as maths: the harness must report, not crash."""

from __future__ import annotations

import os
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


# --------------------------------------------------------------------------- process-level failures
# Written the way a wrapper around a compiled kernel is: a Python module that hands the tensor to
# native code.  Each fails in one kind of call only, so the other checks have something to pass.

def _native_null_read():
    """What a kernel that dereferences a bad pointer does to its process."""
    import ctypes

    ctypes.string_at(0)


class SegfaultsInEval(nn.BatchNorm2d):
    """The inference kernel reads through a null pointer: SIGSEGV on every eval forward."""

    def forward(self, x):
        if not self.training:
            _native_null_read()
        return super().forward(x)


class AbortsInBackward(nn.BatchNorm2d):
    """The backward kernel fails an internal assertion: ``abort()`` (SIGABRT) when gradients flow."""

    def forward(self, x):
        return _AbortingBackward.apply(super().forward(x))


class _AbortingBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y):
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad):
        os.abort()


class HangsInNativeEval(nn.BatchNorm2d):
    """Every eval forward waits inside native code for a completion that never comes.

    ``torch.futures.Future().wait()`` blocks in C++ with the GIL released; no signal handler runs
    until it returns, so an alarm cannot stop it (unlike ``time.sleep`` or a ctypes ``sleep``).
    """

    def forward(self, x):
        if not self.training:
            torch.futures.Future().wait()
        return super().forward(x)


class NaNForLargeBatches(nn.BatchNorm2d):
    """A shared-memory reduction sized for 64 rows: larger batches read uninitialised memory (NaN)."""

    def forward(self, x):
        out = super().forward(x)
        if x.shape[0] > 64:
            out = out.clone()
            out[64:] = float("nan")
        return out


class ReturnsFloat64(nn.BatchNorm2d):
    """Accumulates in float64 and forgets to cast back: float32 in, float64 out."""

    def forward(self, x):
        return super().forward(x).double()


class ReturnsOnMeta(nn.BatchNorm2d):
    """Returns its output on another device than the input's (on a CPU-only machine, the meta device)."""

    def forward(self, x):
        return super().forward(x).to("meta")


class RaisesInBackward(nn.BatchNorm2d):
    """Forward is fine; the backward kernel raises (a missing implementation for this layout)."""

    def forward(self, x):
        return _RaisingBackward.apply(super().forward(x))


class _RaisingBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y):
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("batch_norm_backward_kernel: no kernel for this memory layout (simulated)")


OOM_ELEMENTS = 4096
"""Inputs with more elements than this run out of (simulated) device memory."""


class OutOfMemoryForLargeShapes(nn.BatchNorm2d):
    """Allocates a workspace that grows with the input: large shapes raise ``torch.cuda.OutOfMemoryError``."""

    def forward(self, x):
        if x.numel() > OOM_ELEMENTS:
            need = x.numel() * x.element_size() * 64
            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate {need / 2**20:.2f} MiB (GPU 0; 0 bytes free)")
        return super().forward(x)


class HangsInEval(nn.BatchNorm2d):
    """Every eval forward spins in Python (the alarm stops it); training works."""

    def forward(self, x):
        while not self.training:
            time.sleep(0.05)
        return super().forward(x)
