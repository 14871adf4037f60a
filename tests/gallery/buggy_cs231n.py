"""Buggy cs231n batch-norm solutions (kind ``numpy-cs231n``).

Each class is ``correct.Cs231nBatchNorm`` with one method rewritten the way
students of the assignment (``layers.py``: ``batchnorm_forward``,
``batchnorm_backward``, ``spatial_batchnorm_*``) get it wrong.  Everything
else, including the cs231n running averages stored back into ``bn_param``,
is the correct code.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tests.gallery.correct import Cs231nBatchNorm, param_or_fill, running_or_zeros

__all__ = [
    "Cs231nDdof1",
    "Cs231nDgammaFromX",
    "Cs231nDxOfCentered",
    "Cs231nFloat64Output",
    "Cs231nDxDoubleMean",
    "Cs231nTestModeBessel",
    "Cs231nSpatialReshape",
]


class Cs231nDdof1(Cs231nBatchNorm):
    """Bug: normalises with ``np.var(x, axis=0, ddof=1)``, the unbiased sample variance.

    Bug class B2 (unbiased estimator where the biased one is expected).
    The student remembered that the sample variance "should" use ``N-1``.
    For the small batches of the assignment (N = 4..10) the output is too
    small by ``sqrt((N-1)/N)``.  The backward (the correct closed form, from
    the cache) no longer matches this forward either.  Correct: ``np.var(x,
    axis=0)`` (``ddof=0``) for normalisation, and the biased variance in the
    cs231n running average.
    """

    @classmethod
    def batchnorm_forward(
        cls, x: np.ndarray, gamma: np.ndarray | None, beta: np.ndarray | None, bn_param: dict[str, Any]
    ) -> tuple[np.ndarray, dict[str, Any]]:
        if bn_param["mode"] != "train":
            return super().batchnorm_forward(x, gamma, beta, bn_param)
        eps = bn_param.get("eps", 1e-5)
        momentum = bn_param.get("momentum", 0.9)
        _n, d = x.shape
        running_mean = running_or_zeros(bn_param, "running_mean", d, x.dtype)
        running_var = running_or_zeros(bn_param, "running_var", d, x.dtype)
        xf = x.astype(np.float64)
        g, b = param_or_fill(gamma, d, 1.0), param_or_fill(beta, d, 0.0)
        mu = np.mean(xf, axis=0)
        var = np.var(xf, axis=0, ddof=1)
        xmu = xf - mu
        ivar = 1.0 / np.sqrt(var + eps)
        xhat = xmu * ivar
        bn_param["running_mean"] = (momentum * running_mean + (1 - momentum) * mu).astype(running_mean.dtype)
        bn_param["running_var"] = (momentum * running_var + (1 - momentum) * var).astype(running_var.dtype)
        cache = {
            "mode": "train", "x": xf, "mu": mu, "xmu": xmu, "var": var, "ivar": ivar, "xhat": xhat,
            "gamma": g, "eps": eps, "dtype": x.dtype,
            "param_dtype": x.dtype if gamma is None else np.asarray(gamma).dtype,
        }
        return (g * xhat + b).astype(x.dtype), cache


class Cs231nDgammaFromX(Cs231nBatchNorm):
    """Bug: ``dgamma = np.sum(dout * x, axis=0)``, with the raw input instead of ``x_hat``.

    Bug class B24 (wrong dgamma).  ``out = gamma * x_hat + beta``, so
    ``dgamma = sum(dout * x_hat)``; using ``x`` is right only when the batch
    already has mean 0 and variance 1.  ``dx`` and ``dbeta`` are right.
    """

    @classmethod
    def batchnorm_backward(
        cls, dout: np.ndarray, cache: dict[str, Any]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        g = dout.astype(np.float64)
        x, xhat, ivar, gamma = cache["x"], cache["xhat"], cache["ivar"], cache["gamma"]
        dbeta = np.sum(g, axis=0)
        dgamma = np.sum(g * x, axis=0)
        if cache["mode"] == "train":
            dx = gamma * ivar * (g - g.mean(axis=0) - xhat * (g * xhat).mean(axis=0))
        else:
            dx = gamma * ivar * g
        pdt = cache["param_dtype"]
        return dx.astype(cache["dtype"]), dgamma.astype(pdt), dbeta.astype(pdt)


class Cs231nDxOfCentered(Cs231nBatchNorm):
    """Bug: the staged backward stops one step early and returns the gradient w.r.t. ``x - mu``.

    Seed 002's staged backward (own class "seed-002"): after step 2,
    ``dx1 = dxmu1 + dxmu2`` is the gradient of the centred input; the last
    step, ``dx = dx1 + 1/m * dmu`` (the path through the batch mean), was
    forgotten.  ``dgamma``/``dbeta`` are right.  Correct: add ``dx2 = -1/m sum dx1``.
    """

    @classmethod
    def batchnorm_backward(
        cls, dout: np.ndarray, cache: dict[str, Any]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if cache["mode"] != "train":
            return super().batchnorm_backward(dout, cache)
        g = dout.astype(np.float64)
        xhat, xmu, ivar, var, gamma = cache["xhat"], cache["xmu"], cache["ivar"], cache["var"], cache["gamma"]
        m = g.shape[0]
        sqrtvar = np.sqrt(var + cache["eps"])
        dbeta = np.sum(g, axis=0)  # step 9
        dgamma = np.sum(g * xhat, axis=0)  # step 8
        dxhat = g * gamma
        divar = np.sum(dxhat * xmu, axis=0)  # step 7
        dxmu1 = dxhat * ivar
        dsqrtvar = -1.0 / sqrtvar**2 * divar  # step 6
        dvar = 0.5 * ivar * dsqrtvar  # step 5
        dsq = dvar / m  # step 4
        dxmu2 = 2.0 * xmu * dsq  # step 3
        dx = dxmu1 + dxmu2  # step 2 ... and the mean's step 1 is missing
        pdt = cache["param_dtype"]
        return dx.astype(cache["dtype"]), dgamma.astype(pdt), dbeta.astype(pdt)


class Cs231nFloat64Output(Cs231nBatchNorm):
    """Bug: casts the input to float64 "for precision" and returns float64 whatever came in.

    Output contract (own class "contract-dtype").  ``x = x.astype(np.float64)``
    at the top of ``batchnorm_forward``, and nothing casts back: a float32
    network silently becomes float64 after the first batch-norm layer.  The
    values are right.  Correct: compute in float64 if you like, but return
    ``out.astype(x.dtype)``.
    """

    @classmethod
    def batchnorm_forward(
        cls, x: np.ndarray, gamma: np.ndarray | None, beta: np.ndarray | None, bn_param: dict[str, Any]
    ) -> tuple[np.ndarray, dict[str, Any]]:
        x = x.astype(np.float64)
        return super().batchnorm_forward(x, gamma, beta, bn_param)


class Cs231nDxDoubleMean(Cs231nBatchNorm):
    """Bug: simplified ``dx`` with the ``1/N`` applied twice to the correction terms.

    Bug class B24.  The compact formula is
    ``dx = (1/N) gamma ivar (N dout - sum(dout) - xhat sum(dout xhat))``; the
    student wrote ``mean`` for the two sums *and* kept the ``1/N`` in front,
    so both correction terms are ``N`` times too small.  ``dgamma``/``dbeta``
    are right.
    """

    @classmethod
    def batchnorm_backward(
        cls, dout: np.ndarray, cache: dict[str, Any]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if cache["mode"] != "train":
            return super().batchnorm_backward(dout, cache)
        g = dout.astype(np.float64)
        xhat, ivar, gamma = cache["xhat"], cache["ivar"], cache["gamma"]
        n = g.shape[0]
        dbeta = np.sum(g, axis=0)
        dgamma = np.sum(g * xhat, axis=0)
        dx = (1.0 / n) * gamma * ivar * (n * g - np.mean(g, axis=0) - xhat * np.mean(g * xhat, axis=0))
        pdt = cache["param_dtype"]
        return dx.astype(cache["dtype"]), dgamma.astype(pdt), dbeta.astype(pdt)


class Cs231nTestModeBessel(Cs231nBatchNorm):
    """Bug: test mode applies the ``m/(m-1)`` population correction to the running variance.

    Bug class B3 (train/eval variance mismatch).  The student read the
    paper's (and seed 000's) ``Var[x] = m/(m-1) E_B[sigma_B^2]`` and applied
    it at test time, with ``m`` the size of the test batch, to a running
    variance that the cs231n convention already stores as an estimate.
    Training is right.  Correct: test mode uses ``running_var`` as stored.
    """

    @classmethod
    def batchnorm_forward(
        cls, x: np.ndarray, gamma: np.ndarray | None, beta: np.ndarray | None, bn_param: dict[str, Any]
    ) -> tuple[np.ndarray, dict[str, Any]]:
        if bn_param["mode"] != "test":
            return super().batchnorm_forward(x, gamma, beta, bn_param)
        eps = bn_param.get("eps", 1e-5)
        n, d = x.shape
        xf = x.astype(np.float64)
        g, b = param_or_fill(gamma, d, 1.0), param_or_fill(beta, d, 0.0)
        mu = running_or_zeros(bn_param, "running_mean", d, x.dtype).astype(np.float64)
        var = running_or_zeros(bn_param, "running_var", d, x.dtype).astype(np.float64) * n / (n - 1)
        xmu = xf - mu
        ivar = 1.0 / np.sqrt(var + eps)
        xhat = xmu * ivar
        cache = {
            "mode": "test", "x": xf, "mu": mu, "xmu": xmu, "var": var, "ivar": ivar, "xhat": xhat,
            "gamma": g, "eps": eps, "dtype": x.dtype,
            "param_dtype": x.dtype if gamma is None else np.asarray(gamma).dtype,
        }
        return (g * xhat + b).astype(x.dtype), cache


class Cs231nSpatialReshape(Cs231nBatchNorm):
    """Bug: ``spatial_batchnorm_forward`` reshapes ``(N, C, H, W)`` to ``(-1, C)`` without transposing.

    Bug class B18 (channel axis mistaken), the classic spatial-batchnorm
    mistake of the assignment: ``x.reshape(-1, C)`` keeps memory order, so
    each "column" mixes channels and positions.  The 2-D functions are
    right.  Correct: ``x.transpose(0, 2, 3, 1).reshape(-1, C)`` and the
    inverse transpose on the way out (and in the backward).
    """

    @classmethod
    def spatial_batchnorm_forward(
        cls, x: np.ndarray, gamma: np.ndarray | None, beta: np.ndarray | None, bn_param: dict[str, Any]
    ) -> tuple[np.ndarray, dict[str, Any]]:
        n, c, h, w = x.shape
        out, cache = cls.batchnorm_forward(x.reshape(-1, c), gamma, beta, bn_param)
        return out.reshape(n, c, h, w), cache

    @classmethod
    def spatial_batchnorm_backward(
        cls, dout: np.ndarray, cache: dict[str, Any]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n, c, h, w = dout.shape
        dx, dgamma, dbeta = cls.batchnorm_backward(dout.reshape(-1, c), cache)
        return dx.reshape(n, c, h, w), dgamma, dbeta
