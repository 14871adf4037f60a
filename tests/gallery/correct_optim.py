"""Correct optimizers written from seed 001's and Keras's formulas (not from torch's): each must pass the
``optim`` suite under its own convention, and fail under torch's with a hint naming that convention.

Written independently of ``bnverify.reference.optimizers`` (write it twice and compare).
"""

from __future__ import annotations

import math

import torch
from torch.optim import Optimizer


class SeedSGD(Optimizer):
    """Seed 001: ``v := a v - gamma grad; theta := theta + v`` (v starts at 0); Nesterov in shifted parameters
    ``theta^ := theta^ + a v_new - gamma grad``; weight decay ``lambda ||W||^2``: ``grad + 2 lambda W``."""

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, a = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad + 2 * group["weight_decay"] * p
                if a == 0:
                    p.sub_(lr * g)
                    continue
                st = self.state[p]
                v = st.setdefault("velocity", torch.zeros_like(p))
                v.mul_(a).sub_(lr * (1 - group["dampening"]) * g)
                if group["nesterov"]:
                    p.add_(a * v - lr * g)
                else:
                    p.add_(v)


class SeedRMSprop(Optimizer):
    """Seed 001: ``u := b u + (1 - b) grad^2; theta := theta - gamma grad / sqrt(u + eps)``; centred and
    momentum as Keras writes them (``m := mu m + gamma grad / sqrt(s + eps)``; ``theta -= m``)."""

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                                      centered=centered))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            b, lr = group["alpha"], group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad + 2 * group["weight_decay"] * p
                st = self.state[p]
                u = st.setdefault("square_avg", torch.zeros_like(p))
                u.mul_(b).add_((1 - b) * g * g)
                s = u
                if group["centered"]:
                    ga = st.setdefault("grad_avg", torch.zeros_like(p))
                    ga.mul_(b).add_((1 - b) * g)
                    s = u - ga * ga
                inc = lr * g / torch.sqrt(s + group["eps"])
                if group["momentum"] > 0:
                    m = st.setdefault("momentum_buffer", torch.zeros_like(p))
                    m.mul_(group["momentum"]).add_(inc)
                    p.sub_(m)
                else:
                    p.sub_(inc)


class SeedAdam(Optimizer):
    """Seed 001: ``v := a v + (1 - a) grad; u := b u + (1 - b) grad^2; theta := theta - gamma v / sqrt(u + eps)``
    (no bias correction), L2 weight decay ``2 lambda W``."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            a, b = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad + 2 * group["weight_decay"] * p
                st = self.state[p]
                v = st.setdefault("exp_avg", torch.zeros_like(p))
                u = st.setdefault("exp_avg_sq", torch.zeros_like(p))
                v.mul_(a).add_((1 - a) * g)
                u.mul_(b).add_((1 - b) * g * g)
                if group["amsgrad"]:
                    mx = st.setdefault("max_exp_avg_sq", torch.zeros_like(p))
                    torch.maximum(mx, u, out=mx)
                    u = mx
                p.sub_(group["lr"] * v / torch.sqrt(u + group["eps"]))


class KerasAdam(Optimizer):
    """Keras 3's Adam: ``alpha = lr sqrt(1 - b2^t) / (1 - b1^t); theta -= alpha m / (sqrt(v) + eps)`` ("eps hat"),
    weight decay decoupled and multiplied by lr, applied before the update."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-7, weight_decay=0.0, amsgrad=False):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            lr = group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if group["weight_decay"]:
                    p.sub_(p * group["weight_decay"] * lr)
                g = p.grad
                st = self.state[p]
                st["step"] = st.get("step", 0) + 1
                m = st.setdefault("exp_avg", torch.zeros_like(p))
                v = st.setdefault("exp_avg_sq", torch.zeros_like(p))
                m.add_((g - m) * (1 - b1))
                v.add_((g * g - v) * (1 - b2))
                if group["amsgrad"]:
                    vh = st.setdefault("max_exp_avg_sq", torch.zeros_like(p))
                    torch.maximum(vh, v, out=vh)
                    v = vh
                t = st["step"]
                alpha = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
                p.sub_(m * alpha / (torch.sqrt(v) + group["eps"]))
