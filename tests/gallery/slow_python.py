"""A correct but slow batch norm: every number is a Python object, as in a pure-Python tensor backend.

``PurePythonBatchNorm`` (kind ``torch-module``) has ``torch.nn.BatchNorm2d``'s interface
(``tests.gallery.correct.BatchNorm``), but its training and eval forwards and its backward run
elementwise in Python over ``Scalar`` objects, the way a teaching autograd engine or a pure-Python
tensor library does: one object allocated per operation.  The statistics are two-pass in Python
floats (double precision), so the results are right to rounding in every dtype; only the speed
differs from torch's kernels, by three to four orders of magnitude (tens of milliseconds for a
batch of a thousand values).  It is the gallery's example of a slow correct target: the time
budget (``--time-budget``) must give it a verdict.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from tests.gallery.correct import BatchNorm

__all__ = ["PurePythonBatchNorm", "Scalar"]


class Scalar:
    """One number of a pure-Python tensor backend: each arithmetic operation returns a new object."""

    __slots__ = ("v", "prev", "op")

    def __init__(self, v: float, prev: tuple[Scalar, ...] = (), op: str = "") -> None:
        self.v = float(v)
        self.prev = prev  # the operands, as a graph-recording backend keeps them
        self.op = op

    def __add__(self, o: Scalar) -> Scalar:
        return Scalar(self.v + o.v, (self, o), "+")

    def __sub__(self, o: Scalar) -> Scalar:
        return Scalar(self.v - o.v, (self, o), "-")

    def __mul__(self, o: Scalar) -> Scalar:
        return Scalar(self.v * o.v, (self, o), "*")

    def __truediv__(self, o: Scalar) -> Scalar:
        return Scalar(self.v / o.v, (self, o), "/")

    def rsqrt(self) -> Scalar:
        return Scalar(1.0 / math.sqrt(self.v), (self,), "rsqrt")


def _channels(x: torch.Tensor) -> list[list[Scalar]]:
    """The values of each channel of ``(N, C, *S)`` input, in (N, *S) order."""
    c = x.shape[1]
    rows = x.detach().to("cpu", torch.float64).movedim(1, 0).reshape(c, -1).tolist()
    return [[Scalar(v) for v in row] for row in rows]


def _tensor(rows: list[list[Scalar]], like: torch.Tensor) -> torch.Tensor:
    """Per-channel rows back to a tensor of ``like``'s shape, dtype and device."""
    shape = (like.shape[1], like.shape[0]) + tuple(like.shape[2:])
    t = torch.tensor([[float(s.v) for s in row] for row in rows], dtype=torch.float64).reshape(shape).movedim(0, 1)
    return t.to(device=like.device, dtype=like.dtype)


def _params(p: torch.Tensor | None, c: int, fill: float) -> list[Scalar]:
    if p is None:
        return [Scalar(fill)] * c
    return [Scalar(v) for v in p.detach().to("cpu", torch.float64).tolist()]


def _stats(row: list[Scalar], eps: float) -> tuple[Scalar, Scalar, Scalar]:
    """Two-pass mean, biased variance and 1/sqrt(var + eps) of one channel."""
    m = Scalar(len(row))
    total = Scalar(0.0)
    for v in row:
        total = total + v
    mean = total / m
    sq = Scalar(0.0)
    for v in row:
        d = v - mean
        sq = sq + d * d
    var = sq / m
    return mean, var, (var + Scalar(eps)).rsqrt()


class _TrainFunction(torch.autograd.Function):
    """Training forward and backward, elementwise in Python (the closed form of ``correct.BatchNormTrainFunction``)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float):
        rows = _channels(x)
        c = len(rows)
        g, b = _params(weight, c, 1.0), _params(bias, c, 0.0)
        out, means, variances = [], [], []
        for k, row in enumerate(rows):
            mean, var, inv = _stats(row, eps)
            out.append([(v - mean) * inv * g[k] + b[k] for v in row])
            means.append(float(mean.v))
            variances.append(float(var.v))
        ctx.save_for_backward(x, weight)
        ctx.eps = eps
        stats_dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        mean_t = torch.tensor(means, dtype=stats_dtype, device=x.device)
        var_t = torch.tensor(variances, dtype=stats_dtype, device=x.device)
        ctx.mark_non_differentiable(mean_t, var_t)
        return _tensor(out, x), mean_t, var_t

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor, _dmean: Any, _dvar: Any):
        x, weight = ctx.saved_tensors
        rows, grads = _channels(x), _channels(dy)
        c = len(rows)
        g = _params(weight, c, 1.0)
        dx, dgamma, dbeta = [], [], []
        for k, row in enumerate(rows):
            mean, _var, inv = _stats(row, ctx.eps)
            m = Scalar(len(row))
            xhat = [(v - mean) * inv for v in row]
            sb, sg = Scalar(0.0), Scalar(0.0)
            for d, h in zip(grads[k], xhat):
                sb = sb + d
                sg = sg + d * h
            scale = g[k] * inv
            dx.append([scale * (d - sb / m - h * (sg / m)) for d, h in zip(grads[k], xhat)])
            dgamma.append(float(sg.v))
            dbeta.append(float(sb.v))
        dw = db = None
        if weight is not None:
            dw = torch.tensor(dgamma, dtype=weight.dtype, device=weight.device)
            db = torch.tensor(dbeta, dtype=weight.dtype, device=weight.device)
        return _tensor(dx, x), dw, db, None


class _EvalFunction(torch.autograd.Function):
    """Eval forward ``gamma (x - running_mean) / sqrt(running_var + eps) + beta`` and its backward, in Python."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                running_mean: torch.Tensor, running_var: torch.Tensor, eps: float) -> torch.Tensor:
        rows = _channels(x)
        c = len(rows)
        g, b = _params(weight, c, 1.0), _params(bias, c, 0.0)
        rm, rv = _params(running_mean, c, 0.0), _params(running_var, c, 1.0)
        out = []
        for k, row in enumerate(rows):
            inv = (rv[k] + Scalar(eps)).rsqrt()
            out.append([(v - rm[k]) * inv * g[k] + b[k] for v in row])
        ctx.save_for_backward(x, weight, running_mean, running_var)
        ctx.eps = eps
        return _tensor(out, x)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor):
        x, weight, running_mean, running_var = ctx.saved_tensors
        rows, grads = _channels(x), _channels(dy)
        c = len(rows)
        g = _params(weight, c, 1.0)
        rm, rv = _params(running_mean, c, 0.0), _params(running_var, c, 1.0)
        dx, dgamma, dbeta = [], [], []
        for k, row in enumerate(rows):
            inv = (rv[k] + Scalar(ctx.eps)).rsqrt()
            sb, sg = Scalar(0.0), Scalar(0.0)
            for d, v in zip(grads[k], row):
                sb = sb + d
                sg = sg + d * ((v - rm[k]) * inv)
            dx.append([d * g[k] * inv for d in grads[k]])
            dgamma.append(float(sg.v))
            dbeta.append(float(sb.v))
        dw = db = None
        if weight is not None:
            dw = torch.tensor(dgamma, dtype=weight.dtype, device=weight.device)
            db = torch.tensor(dbeta, dtype=weight.dtype, device=weight.device)
        return _tensor(dx, x), dw, db, None, None, None


class PurePythonBatchNorm(BatchNorm):
    """Correct batch norm computed elementwise on Python ``Scalar`` objects: right, and slow."""

    train_function = _TrainFunction
    eval_function = _EvalFunction
