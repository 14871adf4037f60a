"""PyTorch batch norms written the way public re-implementations write them (tutorials, textbooks, repos).

Correct ones (``CORRECT_PUBLIC`` in ``tests.gallery.registry``):

* ``FoldedBatchNorm``: folds the normalisation into one scale and shift per channel,
  ``scale = gamma / sqrt(var + eps)``, ``shift = beta - mean * scale``, ``y = x * scale + shift``:
  the form inference engines and many fused kernels use.  Not bit-exact under power-of-two
  scaling (``beta - mean * scale`` rounds differently), but as accurate as the plain form.
* ``SubmoduleStatsBatchNorm``: the running statistics live in a registered submodule
  (``self.stats``) and are exposed as properties, as in code that shares one statistics
  tracker between layers; ``state_dict`` keys are ``stats.running_mean`` etc.
* ``GradModeBatchNorm``: the textbook pattern (Dive into Deep Learning's ``batch_norm``) that
  picks the mode from ``torch.is_grad_enabled()``: "if not torch.is_grad_enabled(): use the moving
  averages".  A named design: it trains whenever autograd is on and infers under ``no_grad``,
  whatever ``.train()``/``.eval()`` say.

Buggy ones (``PUBLIC_BUGS`` in ``tests.gallery.registry_course``):

* ``GraphInBuffersBatchNorm``: assigns the running averages from the batch statistics without
  ``detach()``, so the buffers carry autograd history (memory grows; a second backward fails).
* ``LargeBatchInPlaceBatchNorm``: for batches of 128 samples or more it normalises the caller's
  tensor in place "to save memory".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _TorchLikeBatchNorm(nn.Module):
    """The constructor, parameters and buffers of ``torch.nn.BatchNorm2d``."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
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

    def _factor(self):
        self.num_batches_tracked += 1
        return 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum


def _shape(x):
    return (1, -1) + (1,) * (x.dim() - 2)


def _dims(x):
    return [0] + list(range(2, x.dim()))


class FoldedBatchNorm(_TorchLikeBatchNorm):
    """Batch norm as one multiply-add per element: ``y = x * scale + shift``."""

    def forward(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")
        use_batch = self.training or not self.track_running_stats
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        if use_batch:
            dims = _dims(xf)
            n = xf.numel() // xf.shape[1]
            if n < 2 and self.training:
                raise ValueError(f"Expected more than 1 value per channel when training, got input size {list(x.shape)}")
            mean = xf.mean(dims)
            var = (xf - mean.reshape(_shape(xf))).pow(2).mean(dims)
            if self.training and self.track_running_stats:
                w = self._factor()
                with torch.no_grad():
                    self.running_mean.mul_(1 - w).add_(w * mean.to(self.running_mean.dtype))
                    self.running_var.mul_(1 - w).add_(w * var.to(self.running_var.dtype) * n / (n - 1))
        else:
            mean, var = self.running_mean.to(xf.dtype), self.running_var.to(xf.dtype)
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            scale = self.weight.to(xf.dtype) * scale
            shift = self.bias.to(xf.dtype) - mean * scale
        else:
            shift = -mean * scale
        return (xf * scale.reshape(_shape(xf)) + shift.reshape(_shape(xf))).to(x.dtype)


class _RunningStats(nn.Module):
    """A running-statistics tracker: buffers only, shared by layers that want one."""

    def __init__(self, num_features, device=None, dtype=None):
        super().__init__()
        self.register_buffer("running_mean", torch.zeros(num_features, device=device, dtype=dtype))
        self.register_buffer("running_var", torch.ones(num_features, device=device, dtype=dtype))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))

    @torch.no_grad()
    def update(self, mean, var, n, momentum):
        self.num_batches_tracked += 1
        w = 1.0 / float(self.num_batches_tracked) if momentum is None else momentum
        self.running_mean.mul_(1 - w).add_(w * mean.to(self.running_mean.dtype))
        self.running_var.mul_(1 - w).add_(w * var.to(self.running_var.dtype) * n / (n - 1))


class SubmoduleStatsBatchNorm(nn.Module):
    """Running statistics in a registered submodule, exposed as ``running_mean``/``running_var`` properties."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 device=None, dtype=None):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features, device=device, dtype=dtype))
            self.bias = nn.Parameter(torch.zeros(num_features, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.stats = _RunningStats(num_features, device, dtype) if track_running_stats else None

    @property
    def running_mean(self):
        return None if self.stats is None else self.stats.running_mean

    @property
    def running_var(self):
        return None if self.stats is None else self.stats.running_var

    @property
    def num_batches_tracked(self):
        return None if self.stats is None else self.stats.num_batches_tracked

    def forward(self, x):
        if self.training and self.stats is not None:
            n = x.numel() // x.shape[1]
            if n < 2:
                raise ValueError(f"Expected more than 1 value per channel when training, got input size {list(x.shape)}")
            xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
            self.stats.update(xf.mean(_dims(xf)), xf.var(_dims(xf), unbiased=False), n, self.momentum)
        use_batch = self.training or self.stats is None
        return F.batch_norm(x, None if use_batch else self.running_mean, None if use_batch else self.running_var,
                            self.weight, self.bias, True if use_batch else False, 0.0, self.eps)


def batch_norm(X, gamma, beta, moving_mean, moving_var, eps, momentum):
    """Dive into Deep Learning's ``batch_norm``, for any input rank >= 2."""
    # Use is_grad_enabled to determine whether we are in training mode
    if not torch.is_grad_enabled():
        # In prediction mode, use mean and variance obtained by moving average
        X_hat = (X - moving_mean.reshape(_shape(X))) / torch.sqrt(moving_var.reshape(_shape(X)) + eps)
    else:
        dims = _dims(X)
        n = X.numel() // X.shape[1]
        if n < 2:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {list(X.shape)}")
        mean = X.mean(dim=dims)
        var = ((X - mean.reshape(_shape(X))) ** 2).mean(dim=dims)
        # In training mode, the current mean and variance are used
        X_hat = (X - mean.reshape(_shape(X))) / torch.sqrt(var.reshape(_shape(X)) + eps)
        # Update the mean and variance using moving average
        moving_mean = (1.0 - momentum) * moving_mean + momentum * mean.detach()
        moving_var = (1.0 - momentum) * moving_var + momentum * var.detach() * n / (n - 1)
    Y = gamma.reshape(_shape(X)) * X_hat + beta.reshape(_shape(X))  # Scale and shift
    return Y, moving_mean, moving_var


class GradModeBatchNorm(_TorchLikeBatchNorm):
    """The textbook layer around ``batch_norm``: the mode follows grad mode, by design."""

    def forward(self, X):
        gamma = self.weight if self.affine else torch.ones(self.num_features, dtype=X.dtype, device=X.device)
        beta = self.bias if self.affine else torch.zeros(self.num_features, dtype=X.dtype, device=X.device)
        if not self.track_running_stats:  # nothing to infer with: always the batch's statistics
            return F.batch_norm(X, None, None, gamma, beta, True, 0.0, self.eps)
        if torch.is_grad_enabled() and self.track_running_stats:
            self.num_batches_tracked += 1
        m = self.momentum if self.momentum is not None else 1.0 / float(max(int(self.num_batches_tracked), 1))
        Y, mm, mv = batch_norm(X, gamma, beta, self.running_mean, self.running_var, eps=self.eps, momentum=m)
        if torch.is_grad_enabled() and self.track_running_stats:
            self.running_mean.copy_(mm)
            self.running_var.copy_(mv)
        return Y


class GraphInBuffersBatchNorm(_TorchLikeBatchNorm):
    """Bug: the running averages are assigned from the batch statistics without ``detach()``."""

    def forward(self, x):
        if self.training and self.track_running_stats:
            dims = _dims(x)
            n = x.numel() // x.shape[1]
            if n < 2:
                raise ValueError(f"Expected more than 1 value per channel when training, got input size {list(x.shape)}")
            mean, var = x.mean(dims), x.var(dims, unbiased=False)
            w = self._factor()
            self.running_mean = (1 - w) * self.running_mean + w * mean  # keeps the graph of every step
            self.running_var = (1 - w) * self.running_var + w * var * n / (n - 1)
        use_batch = self.training or not self.track_running_stats
        return F.batch_norm(x, None if use_batch else self.running_mean.detach(),
                            None if use_batch else self.running_var.detach(),
                            self.weight, self.bias, use_batch, 0.0, self.eps)


class LargeBatchInPlaceBatchNorm(nn.BatchNorm2d):
    """Bug: large batches are normalised in the caller's tensor to save memory."""

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (got {input.dim()}-D input)")

    def forward(self, x):
        out = super().forward(x)
        if x.shape[0] >= 128 and not x.requires_grad:
            with torch.no_grad():
                x.copy_(out)  # reuse the input's memory for the output
            return x
        return out
