"""Batch normalization in plain torch ops: the numpy oracle's twin for any device and dtype.

It is written the way the oracle is (two-pass statistics, biased variance for
normalisation, unbiased ``m/(m-1)`` variance folded into the running
estimate) and is tested against it in ``tests/test_reference.py``.  The
backward pass is autograd's, through those same ops, so it is differentiable
to any order.

16-bit inputs (float16, bfloat16) are normalised with statistics computed in
float32 and the output is cast back to the input dtype, as torch's own
kernels and ``torch._decomp.decompositions.native_batch_norm_helper`` do;
running statistics keep the dtype of their buffers.

It serves as the built-in target ``reference`` and, being a plain
``nn.Module``, as the batch norm of the convergence experiments.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["batch_norm", "BatchNorm", "compute_dtype"]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype statistics are computed in: float32 for 16-bit floats, else the input's."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _channel_shape(x: torch.Tensor) -> tuple[int, ...]:
    return (1, -1) + (1,) * (x.dim() - 2)


def batch_norm(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Same signature and semantics as ``torch.nn.functional.batch_norm``.

    Training: ``y = gamma (x - mu_B) / sqrt(sigma_B^2 + eps) + beta`` with the
    batch's mean and biased variance, and, when buffers are given, in place
    ``r_mean = (1 - momentum) r_mean + momentum mu_B`` and
    ``r_var = (1 - momentum) r_var + momentum m/(m-1) sigma_B^2``.
    Eval: the same with ``r_mean``, ``r_var`` in place of the batch statistics.
    """
    if input.dim() < 2:
        raise ValueError(f"expected input of rank >= 2 (N, C, ...), got shape {tuple(input.shape)}")
    c = input.shape[1]
    m = input.numel() // c if c else 0
    for name, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight), ("bias", bias)):
        if t is not None and t.numel() != c:
            raise RuntimeError(f"{name} should contain {c} elements not {t.numel()}")
    shape = _channel_shape(input)
    acc = compute_dtype(input.dtype)
    x = input.to(acc)
    if training:
        if m <= 1:
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size {tuple(input.shape)}"
            )
        if eps <= 0:
            raise ValueError(f"batch_norm eps must be positive during training, got {eps}")
        dims = [0] + list(range(2, input.dim()))
        mean = x.mean(dim=dims)
        xmu = x - mean.reshape(shape)
        var = (xmu * xmu).mean(dim=dims)
        if running_mean is not None and running_var is not None:
            with torch.no_grad():
                unbiased = var.detach() * (m / (m - 1))
                running_mean.mul_(1 - momentum).add_(mean.detach().to(running_mean.dtype), alpha=momentum)
                running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
    else:
        if running_mean is None or running_var is None:
            raise ValueError("running_mean and running_var must not be None in eval mode")
        if eps < 0:
            raise ValueError(f"batch_norm eps must be non-negative, got {eps}")
        mean = running_mean.to(acc)
        var = running_var.to(acc)
        xmu = x - mean.reshape(shape)
    y = xmu * torch.rsqrt(var + eps).reshape(shape)
    if weight is not None:
        y = y * weight.to(acc).reshape(shape)
    if bias is not None:
        y = y + bias.to(acc).reshape(shape)
    return y.to(input.dtype)


class BatchNorm(nn.Module):
    """Batch norm for input of any rank >= 2, with ``torch.nn.BatchNorm2d``'s constructor.

    ``momentum=None`` gives the cumulative moving average (weight
    ``1/num_batches_tracked``), i.e. seed 000's population statistics over the
    batches seen so far.  ``track_running_stats=False`` keeps no buffers and
    uses batch statistics in eval too.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
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
            self.register_buffer(
                "num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device)
            )
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        update = not self.training or self.track_running_stats
        return batch_norm(
            input,
            self.running_mean if update else None,
            self.running_var if update else None,
            self.weight,
            self.bias,
            use_batch_stats,
            factor,
            self.eps,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
            f"track_running_stats={self.track_running_stats}"
        )
