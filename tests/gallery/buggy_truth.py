"""Buggy batch norms whose failures were once blamed on the wrong cause.

Each is wrong in one way, but that one way upsets checks written for other
mistakes (defaults, ``track_running_stats=False``, sign and order
invariances).  A failure report must then either name the real mistake,
because its hypothesis reproduces the output, or say that no known bug
pattern does; never a cause the numbers do not support.
``tests/gallery/registry_truth.py`` lists them with the phrases each
failure must and must not print.
"""

from __future__ import annotations

import torch

from tests.gallery.correct import BatchNormOps, batch_statistics, compute_dtype, per_channel, reduce_dims

__all__ = ["EpsOutsideSqrtBatchNorm", "NaNAboveBatch64BatchNorm", "TwoWayBatchNorm"]


class EpsOutsideSqrtBatchNorm(BatchNormOps):
    """Bug: divides by ``sqrt(var) + eps`` in training and in eval (eps outside the square root).

    Bug class B23.  The "add eps to the denominator" habit from other layers,
    kept consistently in both paths, so train and eval agree with each other
    and only the value is wrong.  It also shows through checks aimed at other
    mistakes: a default-eps probe measures a nonsense eps, the output of a
    constant channel is ``0 / eps`` instead of ``0 / sqrt(eps)``, and
    ``t(-x) = -t(x)`` fails at scales where ``eps`` rivals ``sqrt(var)``.
    Correct: ``torch.rsqrt(var + eps)``.
    """

    def _train_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        xf = x.to(compute_dtype(x.dtype))
        dims = reduce_dims(xf)
        mean = xf.mean(dims)
        xmu = xf - per_channel(mean, xf)
        var = (xmu * xmu).mean(dims)
        xhat = xmu / per_channel(var.sqrt() + self.eps, xf)
        return self._affine(xhat).to(x.dtype), mean, var

    def _eval_forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.to(compute_dtype(x.dtype))
        inv = 1.0 / (self.running_var.to(xf.dtype).sqrt() + self.eps)
        xhat = (xf - per_channel(self.running_mean.to(xf.dtype), xf)) * per_channel(inv, xf)
        return self._affine(xhat).to(x.dtype)


class NaNAboveBatch64BatchNorm(BatchNormOps):
    """Bug: a training batch of more than 64 samples gives NaN, in every dtype.

    The ported kernel keeps per-sample partial sums in a tile of 64 rows; the
    rows beyond it are read from an uninitialised buffer, which this model
    fills with NaN so that it fails the same way every time.  Nothing here
    overflows: float16 input is accumulated in float32, and batches of up to
    64 samples are exactly right.  Correct: loop over the batch in tiles.
    """

    TILE = 64

    def _train_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        y, mean, var = super()._train_forward(x)
        if x.shape[0] > self.TILE:
            y = y + float("nan")  # every value NaN, still attached to the graph
        return y, mean, var


class TwoWayBatchNorm(BatchNormOps):
    """Bug: wrong in two unrelated ways, so one check meets two distinct failures.

    The affine step is vectorised by two channels and forgets the rest: from the third channel on, gamma
    and beta are not applied (a value error wherever they are not 1 and 0).  The reduction is
    vectorised by pairs too, and an odd number of values per channel (``N * H * W``) is rejected with a
    ``RuntimeError``, a crash of its own.  Both are met within a few examples, so hypothesis finds both
    well inside its time to look for a second bug.  Correct: the affine step on every channel, and any
    number of values per channel.
    """

    def _train_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        per_channel_values = x.numel() // x.shape[1]
        if per_channel_values % 2:
            raise RuntimeError(f"my paired reduction needs an even number of values per channel, got shape {tuple(x.shape)}")
        xf = x.to(compute_dtype(x.dtype))
        mean, var, _invstd, xhat = batch_statistics(xf, self.eps)
        y = xhat.clone()
        if self.weight is not None and self.bias is not None:
            w = per_channel(self.weight.to(xhat.dtype), xhat)[:, :2]
            b = per_channel(self.bias.to(xhat.dtype), xhat)[:, :2]
            y[:, :2] = xhat[:, :2] * w + b
        return y.to(x.dtype), mean, var
