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

from typing import Any

import numpy as np
import torch

from bnverify.reference.batchnorm_torch import BatchNorm, batch_norm
from tests.gallery.correct import BatchNormOps, batch_statistics, compute_dtype, per_channel, reduce_dims

__all__ = [
    "EpsOutsideSqrtBatchNorm", "NaNAboveBatch64BatchNorm", "TwoWayBatchNorm",
    "StdPlusConstantBatchNorm", "CountsEvalCallsBatchNorm", "HalfRunningVarBatchNorm", "EvalAdaptsStatsBatchNorm",
    "SkipUpdateAfterEvalBatchNorm", "HalfUpdateAfterEvalBatchNorm", "FoldEmaBatchNorm",
    "SingleValueUnbiasedBatchNorm", "SingleValueMarksNaNBatchNorm", "NoTrackEvalFreshStatsBatchNorm",
    "NoTrackEvalDoubleVarBatchNorm", "NonPersistentStatsBatchNorm", "StateDictFilterBatchNorm",
    "NonContiguousNoEpsBatchNorm", "Cs231nDefaultMomentumOnePerCent",
]


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


# --------------------------------------------------------------------------- causes named only when reproduced
# Pairs for ``tests/test_diagnosis_audit.py``: in each, one bug whose failure the named cause reproduces, and
# one whose failure looks alike but that no hypothesis reproduces, so that no cause may be named for it.


class StdPlusConstantBatchNorm(BatchNormOps):
    """Bug: divides by ``sqrt(var + eps) + 1e-3``, a constant added to the std "for safety".

    Looks like ``StdFloorBatchNorm`` (``inv-std-floor``): small-spread channels are shrunk and scale
    invariance breaks at small scales.  But the denominator is a sum, not a clamp: at moderate scales
    it is ``std + 0.001``, which no floor reproduces, so the floor may not be named.  Correct: eps under
    the square root is the only constant.
    """

    def _train_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        xf = x.to(compute_dtype(x.dtype))
        dims = reduce_dims(xf)
        mean = xf.mean(dims)
        xmu = xf - per_channel(mean, xf)
        var = (xmu * xmu).mean(dims)
        std = torch.sqrt(var + self.eps) + 1e-3
        return self._affine(xmu / per_channel(std, xf)).to(x.dtype), mean, var


class CountsEvalCallsBatchNorm(BatchNorm):
    """Bug: ``num_batches_tracked`` goes up on every forward call, eval included.

    The increment sits before the ``if self.training`` branch.  Correct: only training-mode forwards
    with ``track_running_stats=True`` count (``CounterNotIncrementedBatchNorm`` is the other way wrong).
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        return super().forward(input)


class HalfRunningVarBatchNorm(BatchNorm):
    """Bug: ``running_var`` starts at 0.5, "half the unit variance", and so does every reset.

    Looks like ``ZerosRunningVarBatchNorm`` (a fresh module that is not the identity in eval), but no
    copied or swapped fill gives 0.5, so none may be named.  Correct: ones.
    """

    def __init__(self, num_features: int, *args: Any, **kwargs: Any) -> None:
        super().__init__(num_features, *args, **kwargs)
        self.reset_running_stats()

    def reset_running_stats(self) -> None:
        super().reset_running_stats()
        if self.running_var is not None:
            with torch.no_grad():
                self.running_var.fill_(0.5)


class EvalAdaptsStatsBatchNorm(BatchNorm):
    """Bug: eval blends each batch into the running statistics with weight 0.5 ("test-time adaptation").

    Statistics drift in eval as with ``EvalUpdatesStatsBatchNorm``, but not by a training-mode update
    (the module's momentum is not 0.5), so "the update is not guarded by the training flag" may not be
    named.  Correct: eval reads the running statistics and never writes them.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training and self.running_mean is not None and input.numel() // input.shape[1] > 1:
            dims = [0, *range(2, input.dim())]
            with torch.no_grad():
                xf = input.detach().to(self.running_mean.dtype)
                self.running_mean.mul_(0.5).add_(xf.mean(dims), alpha=0.5)
                self.running_var.mul_(0.5).add_(xf.var(dims, unbiased=False), alpha=0.5)
        return super().forward(input)


class _AfterEval(BatchNorm):
    """Remembers an eval call, so that the next training step can treat its update differently."""

    _after_eval = False

    def _first_weight_after_eval(self, momentum: float) -> float:
        raise NotImplementedError(f"{type(self).__name__} must define _first_weight_after_eval: this class is a base of gallery bugs")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training:
            self._after_eval = True
            return super().forward(input)
        if not self._after_eval or self.running_mean is None:
            return super().forward(input)
        self._after_eval = False
        self.num_batches_tracked.add_(1)
        w = self._first_weight_after_eval(0.1 if self.momentum is None else self.momentum)
        return batch_norm(input, self.running_mean, self.running_var, self.weight, self.bias, True, w, self.eps)


class SkipUpdateAfterEvalBatchNorm(_AfterEval):
    """Bug: the first training step after an eval call does not update the running statistics.

    The update flag is re-armed one step late after ``.train()``.  Correct: every training step updates.
    """

    def _first_weight_after_eval(self, momentum: float) -> float:
        return 0.0


class HalfUpdateAfterEvalBatchNorm(_AfterEval):
    """Bug: the first training step after an eval call updates with half the momentum ("warm restart").

    The state before the next eval is wrong as with ``SkipUpdateAfterEvalBatchNorm``, but neither a
    skipped update nor an update in eval reproduces it, so neither may be named.  Correct: the same
    momentum on every training step.
    """

    def _first_weight_after_eval(self, momentum: float) -> float:
        return momentum / 2


class FoldEmaBatchNorm(BatchNorm):
    """Bug: eval smooths the folded scale/shift over eval calls, ``fold = (old + new) / 2``.

    A later eval is wrong after more training, as with ``CachedFoldBatchNorm``, but the output is not
    that of any earlier statistics, so "eval caches" may not be named.  Correct: fold the current
    statistics on every call.
    """

    _fold: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.training or self.running_mean is None:
            return super().forward(input)
        scale = torch.rsqrt(self.running_var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight.detach()
        shift = -self.running_mean * scale
        if self.bias is not None:
            shift = shift + self.bias.detach()
        if self._fold is not None:
            scale, shift = (self._fold[0] + scale) / 2, (self._fold[1] + shift) / 2
        self._fold = (scale.clone(), shift.clone())
        shape = (1, -1) + (1,) * (input.dim() - 2)
        return input * scale.to(input.dtype).reshape(shape) + shift.to(input.dtype).reshape(shape)


class _OneValue(BatchNorm):
    """One value per channel in training: no error, the output is beta, and ``_update`` sets the buffers."""

    def _update(self, x: torch.Tensor, w: float) -> None:
        raise NotImplementedError(f"{type(self).__name__} must define _update: this class is a base of gallery bugs")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.running_mean is not None and input.numel() // input.shape[1] == 1):
            return super().forward(input)
        self.num_batches_tracked.add_(1)
        with torch.no_grad():
            self._update(input.detach().reshape(-1).to(self.running_mean.dtype),
                         0.1 if self.momentum is None else self.momentum)
        y = torch.zeros_like(input)
        return y + self.bias.reshape((1, -1) + (1,) * (input.dim() - 2)) if self.bias is not None else y


class SingleValueUnbiasedBatchNorm(_OneValue):
    """Bug: one value per channel trains without an error; the unbiased factor m/(m-1) = 1/0 makes
    running_var NaN, while running_mean takes its ordinary update (bug classes B12, B13).

    Correct (torch): raise ValueError before touching the buffers.
    """

    def _update(self, x: torch.Tensor, w: float) -> None:
        self.running_mean.mul_(1 - w).add_(x, alpha=w)
        self.running_var.mul_(1 - w).add_(torch.zeros_like(x) / 0.0, alpha=w)  # 0 * m/(m-1) = 0/0


class SingleValueMarksNaNBatchNorm(_OneValue):
    """Bug: one value per channel sets both running statistics to NaN "so that eval fails loudly".

    Non-finite statistics as with ``SingleValueUnbiasedBatchNorm``, but the running mean is NaN too,
    which the unbiased factor does not do, so it may not be named.  Correct (torch): raise ValueError.
    """

    def _update(self, x: torch.Tensor, w: float) -> None:
        self.running_mean.fill_(float("nan"))
        self.running_var.fill_(float("nan"))


class _NoTrackEval(BatchNorm):
    """``track_running_stats=False``: no buffers; eval normalises with ``_eval_stats`` instead of the batch's."""

    def _eval_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} must define _eval_stats: this class is a base of gallery bugs")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.training or self.track_running_stats:
            return super().forward(input)
        mean, var = self._eval_stats(input)
        return batch_norm(input, mean, var, self.weight, self.bias, False, 0.0, self.eps)


class NoTrackEvalFreshStatsBatchNorm(_NoTrackEval):
    """Bug: with ``track_running_stats=False`` eval normalises with mean 0, variance 1 (a fresh module's
    statistics, substituted when the buffers are None).  Correct: the batch's own statistics."""

    def _eval_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = x.shape[1]
        return torch.zeros(c, dtype=x.dtype, device=x.device), torch.ones(c, dtype=x.dtype, device=x.device)


class NoTrackEvalDoubleVarBatchNorm(_NoTrackEval):
    """Bug: with ``track_running_stats=False`` eval uses the batch mean and twice the batch variance
    ("smoothed for inference").  Wrong in eval like ``NoTrackEvalFreshStatsBatchNorm``, but not with a
    fresh module's statistics, so that may not be named.  Correct: the batch's own statistics."""

    def _eval_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dims = [0, *range(2, x.dim())]
        xf = x.detach()
        return xf.mean(dims), 2 * xf.var(dims, unbiased=False)


class NonPersistentStatsBatchNorm(BatchNorm):
    """Bug: running statistics registered with ``persistent=False``, so ``state_dict`` leaves them out.

    A loaded model evaluates with mean 0 / variance 1.  Correct: persistent buffers (the default).
    """

    def __init__(self, num_features: int, *args: Any, **kwargs: Any) -> None:
        super().__init__(num_features, *args, **kwargs)
        if self.running_mean is not None:
            for name in ("running_mean", "running_var"):
                t = self._buffers.pop(name)
                self.register_buffer(name, t, persistent=False)


class StateDictFilterBatchNorm(BatchNorm):
    """Bug: ``state_dict`` is overridden to leave out the running statistics, and ``load_state_dict`` to
    load without them ("they are recomputed anyway").  ``state_dict`` lacks them as with
    ``NonPersistentStatsBatchNorm``, but they are ordinary persistent buffers, so neither persistence nor
    plain attributes may be named.  Correct: keep them.
    """

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        full = super().state_dict(*args, **kwargs)
        for key in [k for k in full if k.rsplit(".", 1)[-1] in ("running_mean", "running_var")]:
            del full[key]
        return full

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        return super().load_state_dict(state_dict, strict=False, assign=assign)


class NonContiguousNoEpsBatchNorm(BatchNormOps):
    """Bug: a "fast path" for non-contiguous input copies it and normalises without eps.

    Fails on layouts only, as ``IgnoresStridesBatchNorm`` does, but reads the values right, so the
    strides may not be blamed; the missing eps is what reproduces the output.  Correct: one formula.
    """

    def _train_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if x.is_contiguous():
            return super()._train_forward(x)
        xf = x.contiguous().to(compute_dtype(x.dtype))
        dims = reduce_dims(xf)
        mean = xf.mean(dims)
        xmu = xf - per_channel(mean, xf)
        var = (xmu * xmu).mean(dims)
        return self._affine(xmu / per_channel(var.sqrt(), xf)).to(x.dtype), mean, var


class Cs231nDefaultMomentumOnePerCent:
    """Bug: a cs231n ``batchnorm_forward`` whose default momentum is 0.99 (Keras's), not 0.9.

    ``bn_param.get("momentum", 0.99)``: the checks that pass momentum pass; a ``bn_param`` without it
    keeps 99% of the old statistics.  The measured default, 0.99, reproduces the statistics, so it and
    the flag ``--momentum 0.99`` are named.  Correct: ``bn_param.get("momentum", 0.9)``.
    """

    @staticmethod
    def batchnorm_forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                          bn_param: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        mode = bn_param["mode"]
        eps = bn_param.get("eps", 1e-5)
        momentum = bn_param.get("momentum", 0.99)
        d = x.shape[1]
        running_mean = bn_param.get("running_mean", np.zeros(d, dtype=x.dtype))
        running_var = bn_param.get("running_var", np.zeros(d, dtype=x.dtype))
        xf = x.astype(np.float64)
        if mode == "train":
            mu = xf.mean(axis=0)
            var = ((xf - mu) ** 2).mean(axis=0)
            bn_param["running_mean"] = (momentum * running_mean + (1 - momentum) * mu).astype(running_mean.dtype)
            bn_param["running_var"] = (momentum * running_var + (1 - momentum) * var).astype(running_var.dtype)
        else:
            mu, var = running_mean.astype(np.float64), running_var.astype(np.float64)
        xhat = (xf - mu) / np.sqrt(var + eps)
        return (gamma * xhat + beta).astype(x.dtype), {"xhat": xhat, "gamma": gamma, "var": var, "eps": eps}
