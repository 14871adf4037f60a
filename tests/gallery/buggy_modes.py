"""Buggy batch norms for the ``modes`` suite: right in training output, wrong at inference or in state.

Each class is otherwise the project's torch reference (``bnverify.reference.batchnorm_torch.BatchNorm``,
whose forward/backward are correct) and is wrong in exactly one way that people have shipped
(ANCHORS part A section 6; seeds 000 and 004).  The docstring names the mistake, its bug class and
what the correct code does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bnverify.reference.batchnorm_torch import BatchNorm, batch_norm

__all__ = [
    "BiasedRunningVarBatchNorm",
    "InvertedMomentumBatchNorm",
    "NoRunningUpdateBatchNorm",
    "HardcodedMomentumBatchNorm",
    "MomentumNoneAsDefaultBatchNorm",
    "CounterNotIncrementedBatchNorm",
    "EvalUpdatesStatsBatchNorm",
    "NoTrackKeepsBuffersBatchNorm",
    "SingleValueNaNBatchNorm",
    "UpdateBeforeCheckBatchNorm",
    "KerasEpsDefaultBatchNorm",
    "StatsNotBuffersBatchNorm",
    "CachedFoldBatchNorm",
    "AffineFalseParamsBatchNorm",
    "EvalHardcodedEpsBatchNorm",
    "Cs231nUpdateFractionMomentum",
]


def _batch_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    dims = [0] + list(range(2, x.dim()))
    acc = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    xf = x.detach().to(acc)
    mean = xf.mean(dim=dims)
    var = ((xf - mean.reshape((1, -1) + (1,) * (x.dim() - 2))) ** 2).mean(dim=dims)
    return mean, var, x.numel() // x.shape[1]


class _ManualUpdate(BatchNorm):
    """Normalises with the correct code and updates the running statistics by hand in ``_update``."""

    def _update(self, x: torch.Tensor) -> None:
        raise NotImplementedError(f"{type(self).__name__} is a base class: each bug defines its own update")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.training and self.track_running_stats:
            m = input.numel() // input.shape[1]
            if m <= 1:
                raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(input.shape)}")
            self.num_batches_tracked.add_(1)
            self._update(input)
            return batch_norm(input, None, None, self.weight, self.bias, True, 0.0, self.eps)
        return super().forward(input)


class BiasedRunningVarBatchNorm(_ManualUpdate):
    """Bug: the running variance averages the biased batch variance (no m/(m-1)).

    Bug class B1 (tenstorrent/tt-metal#55438).  Correct (torch, seed 000): store
    ``m/(m-1) sigma_B^2``, so that ``Var[x] = m/(m-1) E_B[sigma_B^2]``.
    """

    def _update(self, x: torch.Tensor) -> None:
        mean, var, _ = _batch_stats(x)
        w = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        with torch.no_grad():
            self.running_mean.mul_(1 - w).add_(mean.to(self.running_mean.dtype), alpha=w)
            self.running_var.mul_(1 - w).add_(var.to(self.running_var.dtype), alpha=w)


class InvertedMomentumBatchNorm(_ManualUpdate):
    """Bug: ported from TensorFlow, ``r = m r + (1 - m) b`` with torch's m = 0.1 (the batch gets weight 0.9).

    Bug class B4 (huggingface/transformers#19454).  Correct (torch): ``r = (1 - m) r + m b``.
    """

    def _update(self, x: torch.Tensor) -> None:
        mean, var, m = _batch_stats(x)
        d = self.momentum if self.momentum is not None else 1.0 - 1.0 / float(self.num_batches_tracked)
        with torch.no_grad():
            self.running_mean.mul_(d).add_(mean.to(self.running_mean.dtype), alpha=1 - d)
            self.running_var.mul_(d).add_((var * m / (m - 1)).to(self.running_var.dtype), alpha=1 - d)


class NoRunningUpdateBatchNorm(_ManualUpdate):
    """Bug: the running statistics are computed into new tensors and never written back.

    Bug class B8 (hiwonjoon/tf-frrn#2): ``self.running_mean = ...`` inside ``torch.no_grad`` on a clone.
    Correct: update the registered buffers in place.
    """

    def _update(self, x: torch.Tensor) -> None:
        mean, var, m = _batch_stats(x)
        rm = self.running_mean.clone()
        rm.mul_(1 - 0.1).add_(mean.to(rm.dtype), alpha=0.1)  # computed, then dropped


class HardcodedMomentumBatchNorm(_ManualUpdate):
    """Bug: the kernel's momentum is a constant 0.1; the constructor's ``momentum`` is never passed down.

    Bug class B4/B26.  Correct: use ``self.momentum``.
    """

    def _update(self, x: torch.Tensor) -> None:
        mean, var, m = _batch_stats(x)
        w = 0.1
        with torch.no_grad():
            self.running_mean.mul_(1 - w).add_(mean.to(self.running_mean.dtype), alpha=w)
            self.running_var.mul_(1 - w).add_((var * m / (m - 1)).to(self.running_var.dtype), alpha=w)


class MomentumNoneAsDefaultBatchNorm(_ManualUpdate):
    """Bug: ``momentum or 0.1``: ``momentum=None`` (cumulative average) silently becomes 0.1, and so does 0.

    Bug class B26 (pytorch#194504).  Correct: ``None`` means weight ``1/num_batches_tracked``; 0 means no update.
    """

    def _update(self, x: torch.Tensor) -> None:
        mean, var, m = _batch_stats(x)
        w = self.momentum or 0.1
        with torch.no_grad():
            self.running_mean.mul_(1 - w).add_(mean.to(self.running_mean.dtype), alpha=w)
            self.running_var.mul_(1 - w).add_((var * m / (m - 1)).to(self.running_var.dtype), alpha=w)


class CounterNotIncrementedBatchNorm(BatchNorm):
    """Bug: ``num_batches_tracked`` is read but never incremented (the ``add_(1)`` was lost in a refactor).

    Bug class B26.  With ``momentum=None`` the factor is then always 1/1: the running statistics are
    the last batch's.  Correct: increment before computing ``1/num_batches_tracked``.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.training and self.track_running_stats:
            factor = 1.0 / max(float(self.num_batches_tracked), 1.0) if self.momentum is None else self.momentum
            return batch_norm(input, self.running_mean, self.running_var, self.weight, self.bias, True,
                              factor, self.eps)
        return super().forward(input)


class EvalUpdatesStatsBatchNorm(BatchNorm):
    """Bug: the running statistics are updated on every call, eval included (the update is not guarded by training).

    Bug class B10 (statistics drift at inference; pytorch#86590).  Correct: update only in training;
    eval normalises with the stored statistics and leaves them unchanged.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training and self.track_running_stats and input.numel() // input.shape[1] > 1:
            mean, var, m = _batch_stats(input)
            w = self.momentum if self.momentum is not None else 0.1
            with torch.no_grad():
                self.running_mean.mul_(1 - w).add_(mean.to(self.running_mean.dtype), alpha=w)
                self.running_var.mul_(1 - w).add_((var * m / (m - 1)).to(self.running_var.dtype), alpha=w)
        return super().forward(input)


class NoTrackKeepsBuffersBatchNorm(BatchNorm):
    """Bug: buffers are registered even with ``track_running_stats=False``, and eval uses them (stale 0/1).

    Bug class B9.  Correct: ``running_mean = running_var = None``; eval uses batch statistics.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device: Any = None, dtype: torch.dtype | None = None) -> None:
        super().__init__(num_features, eps, momentum, affine, True, device, dtype)
        self.track_running_stats = track_running_stats

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.training and not self.track_running_stats:
            return batch_norm(input, None, None, self.weight, self.bias, True, 0.0, self.eps)
        return super().forward(input)


class SingleValueNaNBatchNorm(BatchNorm):
    """Bug: no check for one value per channel: the unbiased factor m/(m-1) = 1/0 puts NaN in running_var.

    Bug classes B12/B13 (pytorch#4534, tensorflow#34062).  Correct (torch): raise ValueError
    "Expected more than 1 value per channel when training" before touching the buffers.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        m = input.numel() // input.shape[1]
        if self.training and self.track_running_stats and m == 1:
            self.num_batches_tracked.add_(1)
            w = self.momentum if self.momentum is not None else 1.0
            with torch.no_grad():
                self.running_mean.mul_(1 - w).add_(input.detach().reshape(-1).to(self.running_mean.dtype), alpha=w)
                unbiased = torch.zeros_like(self.running_var) * float("nan")  # 0 * 1/(1-1)
                self.running_var.mul_(1 - w).add_(unbiased, alpha=w)
            return batch_norm(input, None, None, self.weight, self.bias, False, 0.0, self.eps) * 0 + (
                self.bias.reshape((1, -1) + (1,) * (input.dim() - 2)) if self.bias is not None else 0)
        return super().forward(input)


class UpdateBeforeCheckBatchNorm(BatchNorm):
    """Bug: the running statistics are updated first and the input validated afterwards.

    Bug class B12: the caller catches the ValueError and goes on with a model whose running
    variance is NaN.  Correct: validate first.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        m = input.numel() // input.shape[1]
        if self.training and self.track_running_stats and m == 1:
            w = self.momentum if self.momentum is not None else 1.0
            with torch.no_grad():
                self.running_mean.mul_(1 - w).add_(input.detach().reshape(-1).to(self.running_mean.dtype), alpha=w)
                self.running_var.fill_(float("nan"))
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(input.shape)}")
        return super().forward(input)


class KerasEpsDefaultBatchNorm(BatchNorm):
    """Bug: ported from Keras with its default ``eps=1e-3`` in a module meant to match torch (1e-5).

    Bug class B5 (gzuidhof/nn-transfer#3).  Correct for torch: eps defaults to 1e-5.
    """

    def __init__(self, num_features: int, eps: float = 1e-3, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device: Any = None, dtype: torch.dtype | None = None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)


class StatsNotBuffersBatchNorm(BatchNorm):
    """Bug: running statistics are plain tensor attributes, not registered buffers.

    They work until the model is saved: ``state_dict`` lacks them, so a loaded model evaluates with
    mean 0 / variance 1 (bug class B8, hiwonjoon/tf-frrn#2).  Correct: ``register_buffer``.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device: Any = None, dtype: torch.dtype | None = None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        if track_running_stats:
            rm, rv, n = self.running_mean, self.running_var, self.num_batches_tracked
            del self._buffers["running_mean"], self._buffers["running_var"], self._buffers["num_batches_tracked"]
            object.__setattr__(self, "running_mean", rm)
            object.__setattr__(self, "running_var", rv)
            object.__setattr__(self, "num_batches_tracked", n)


class CachedFoldBatchNorm(BatchNorm):
    """Bug: eval caches the folded ``(scale, shift)`` on first use and never invalidates it.

    An inference speed-up (seed 000's folded transform) that goes stale: after more training the
    next eval still uses the old statistics.  Correct: recompute (or invalidate on train()).
    """

    _fold: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.training or self.running_mean is None:
            return super().forward(input)
        if self._fold is None:
            scale = torch.rsqrt(self.running_var + self.eps)
            if self.weight is not None:
                scale = scale * self.weight.detach()
            shift = -self.running_mean * scale
            if self.bias is not None:
                shift = shift + self.bias.detach()
            self._fold = (scale.clone(), shift.clone())
        shape = (1, -1) + (1,) * (input.dim() - 2)
        scale, shift = self._fold
        return input * scale.to(input.dtype).reshape(shape) + shift.to(input.dtype).reshape(shape)


class AffineFalseParamsBatchNorm(BatchNorm):
    """Bug: ``affine=False`` still creates ``weight``/``bias`` parameters (fixed at 1/0 in forward).

    The optimizer then trains (and weight-decays) parameters that forward ignores, and the
    ``state_dict`` does not load into ``torch.nn.BatchNorm2d(affine=False)``.  Correct: register None.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device: Any = None, dtype: torch.dtype | None = None) -> None:
        super().__init__(num_features, eps, momentum, True, track_running_stats, device, dtype)
        self.affine = affine

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.affine:
            return super().forward(input)
        w, b = self.weight, self.bias
        self._parameters["weight"] = None
        self._parameters["bias"] = None
        try:
            return super().forward(input)
        finally:
            self._parameters["weight"] = w
            self._parameters["bias"] = b


class EvalHardcodedEpsBatchNorm(BatchNorm):
    """Bug: the inference path (a separate fused kernel) uses eps = 1e-5 whatever the constructor says.

    Bug classes B5/B23 (chainer#4505).  Correct: the same ``self.eps`` in training and eval.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.training or self.running_mean is None:
            return super().forward(input)
        return batch_norm(input, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, 1e-5)


class Cs231nUpdateFractionMomentum:
    """Bug: a cs231n solution that blends ``(1 - momentum) * running + momentum * sample`` (torch's way).

    Bug class B4: with cs231n's momentum 0.9 the running averages follow the last batch almost
    entirely.  Correct (cs231n ``layers.py``): ``momentum * running + (1 - momentum) * sample``.
    """

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
            var = ((xf - mu) ** 2).mean(axis=0)
            bn_param["running_mean"] = ((1 - momentum) * running_mean + momentum * mu).astype(running_mean.dtype)
            bn_param["running_var"] = ((1 - momentum) * running_var + momentum * var).astype(running_var.dtype)
        else:
            mu, var = running_mean.astype(np.float64), running_var.astype(np.float64)
        ivar = 1.0 / np.sqrt(var + eps)
        xhat = (xf - mu) * ivar
        return (gamma * xhat + beta).astype(x.dtype), {"mode": mode, "xhat": xhat, "ivar": ivar, "gamma": gamma,
                                                        "dtype": x.dtype}

    @staticmethod
    def batchnorm_backward(dout: np.ndarray, cache: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        g = dout.astype(np.float64)
        xhat, ivar, gamma = cache["xhat"], cache["ivar"], cache["gamma"]
        dx = gamma * ivar * (g - g.mean(axis=0) - xhat * (g * xhat).mean(axis=0)) if cache["mode"] == "train" \
            else gamma * ivar * g
        return dx.astype(cache["dtype"]), (g * xhat).sum(axis=0), g.sum(axis=0)


class ZerosRunningVarBatchNorm(BatchNorm):
    """Bug: ``running_var`` starts at 0 (the ``running_mean`` line copied), not 1.

    Bug class B8 (running statistics wrong from the start).  Eval before any
    training step divides by ``sqrt(0 + eps)``, amplifying the input ~300x;
    after training the EMA is biased towards 0 for the first ~1/momentum steps.
    Correct: ``running_mean = 0``, ``running_var = 1``, so a fresh module is the
    identity in eval.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device: Any = None, dtype: torch.dtype | None = None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        if self.running_var is not None:
            with torch.no_grad():
                self.running_var.zero_()

    def reset_running_stats(self) -> None:
        super().reset_running_stats()
        if self.running_var is not None:
            with torch.no_grad():
                self.running_var.zero_()


class EvalBatchStatsUnlessSingleBatchNorm(BatchNorm):
    """Bug: eval uses the running statistics only for a batch of one and batch statistics otherwise.

    Bug class B7, disguised: "batch statistics are better when we have them".
    A single example looks right; the same example inside a batch gets another
    output, so predictions depend on what else is in the batch.  Correct: eval
    always uses the running statistics, so each sample's output depends on it alone.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training and input.shape[0] > 1 and input.numel() // input.shape[1] > 1:
            return batch_norm(input, None, None, self.weight, self.bias, True, 0.0, self.eps)
        return super().forward(input)
