"""Optimizers that pass for correct at a glance and train measurably worse: the ``optim-convergence`` suite's bugs.

Built on the correct torch-style bases of ``tests.gallery.buggy_optim``; ``tests/test_optim_convergence.py``
runs them through the convergence suite and checks the bug impact it states.
"""

from __future__ import annotations

import torch

from tests.gallery.buggy_optim import TorchStyleSGD


class SGDMomentumOutOfPlace(TorchStyleSGD):
    """The momentum buffer updated out of place (``buf = buf.mul(mu).add(g)`` for ``buf.mul_(mu).add_(g)``):
    the new buffer is used for the step but never stored, so ``self.state`` keeps the first gradient and
    every step is ``g_t + mu g_1`` -- a constant push along the first step's gradient, and no momentum."""

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            mu, d = group["momentum"], group["dampening"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if mu:
                    st = self.state[p]
                    if "momentum_buffer" not in st:
                        st["momentum_buffer"] = g.clone()
                        buf = st["momentum_buffer"]
                    else:
                        buf = st["momentum_buffer"]
                        buf = buf.mul(mu).add(g, alpha=1 - d)
                    g = buf
                p.add_(g, alpha=-group["lr"])


class SGDMomentumNotSaved(TorchStyleSGD):
    """The momentum buffer computed but never written back to ``self.state``: every step starts a fresh
    buffer from the current gradient, so "SGD with momentum 0.9" is plain SGD, ten times slower."""

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            mu, d = group["momentum"], group["dampening"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if mu:
                    buf = self.state[p].get("momentum_buffer")
                    if buf is None:
                        buf = g.clone()
                    else:
                        buf.mul_(mu).add_(g, alpha=1 - d)
                    g = buf
                p.add_(g, alpha=-group["lr"])
