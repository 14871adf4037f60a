"""Deliberately wrong optimizers, each a bug people have shipped (ANCHORS part A section 6, O1-O5, and seed 001).

Each bug is a one-place change to a plain, correct torch-style implementation (``TorchStyleSGD``,
``TorchStyleAdam``, ``TorchStyleRMSprop``, which pass the ``optim`` suite), the way such bugs happen.
``BUGS`` lists ``(class name, reference, the checks that must fail, a word the message must contain)``;
``tests/test_optim.py`` runs them.
"""

from __future__ import annotations

import math

import torch
from torch.optim import Optimizer


# --------------------------------------------------------------------------- correct bases

class TorchStyleSGD(Optimizer):
    """SGD as torch writes it: buffer = first gradient, then ``mu b + (1 - d) g``; Nesterov ``g + mu b``."""

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, foreach=None):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, foreach=foreach))

    def lr_of(self, group):
        return group["lr"]

    def grad_of(self, p):
        return p.grad

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            mu, d, wd = group["momentum"], group["dampening"], group["weight_decay"]
            for p in group["params"]:
                g = self.grad_of(p)
                if g is None:
                    continue
                if wd:
                    g = self.decay(g, p, wd, mu)
                if mu:
                    st = self.state[p]
                    if "momentum_buffer" not in st:
                        st["momentum_buffer"] = self.first_buffer(g, d)
                        buf = st["momentum_buffer"]
                        prev = torch.zeros_like(buf)
                    else:
                        buf = st["momentum_buffer"]
                        prev = buf.clone()
                        buf.mul_(mu).add_(g, alpha=1 - d)
                    g = self.nesterov(g, buf, prev, mu) if group["nesterov"] else buf
                p.add_(g, alpha=-self.lr_of(group))

    def decay(self, g, p, wd, mu):
        return g.add(p, alpha=wd)

    def first_buffer(self, g, d):
        return g.clone()

    def nesterov(self, g, buf, prev, mu):
        return g.add(buf, alpha=mu)


class TorchStyleAdam(Optimizer):
    """Adam as torch writes it: bias-corrected, ``eps`` outside ``sqrt(v_hat)``; ``decoupled`` for AdamW."""

    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, foreach=None):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                                      foreach=foreach))

    def moments(self, p):
        st = self.state[p]
        if "step" not in st:
            st["step"] = torch.tensor(0.0, dtype=torch.float64)
            st["exp_avg"] = torch.zeros_like(p)
            st["exp_avg_sq"] = torch.zeros_like(p)
        return st

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                self.check(p)
                g = p.grad
                if wd and self.decoupled:
                    p.mul_(1 - lr * wd)
                elif wd:
                    g = g.add(p, alpha=wd)
                st = self.moments(p)
                st["step"] += 1
                t = float(st["step"])
                m, v = st["exp_avg"], st["exp_avg_sq"]
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                if group["amsgrad"]:
                    mx = st.setdefault("max_exp_avg_sq", torch.zeros_like(p))
                    torch.maximum(mx, v, out=mx)
                    v = mx
                self.update(p, m, v, t, lr, b1, b2, group["eps"], group)
                self.after(p, lr, wd)

    def check(self, p):
        pass

    def update(self, p, m, v, t, lr, b1, b2, eps, group):
        c1, c2 = 1 - b1**t, 1 - b2**t
        p.addcdiv_(m, (v.sqrt() / math.sqrt(c2)).add_(eps), value=-lr / c1)

    def after(self, p, lr, wd):
        pass


class TorchStyleAdamW(TorchStyleAdam):
    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, foreach=None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach)


class TorchStyleRMSprop(Optimizer):
    """RMSprop as torch writes it: ``sqrt(u) + eps``; centred ``sqrt(u - g_bar^2) + eps``; momentum ``b = mu b + g / den``."""

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
                 foreach=None):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                                      centered=centered, foreach=foreach))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            a = group["alpha"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else p.grad
                st = self.state[p]
                u = st.setdefault("square_avg", torch.zeros_like(p))
                u.mul_(a).addcmul_(g, g, value=1 - a)
                s = u
                if group["centered"]:
                    ga = st.setdefault("grad_avg", torch.zeros_like(p))
                    ga.lerp_(g, 1 - a)
                    s = u.addcmul(ga, ga, value=-1)
                den = self.denominator(s, group["eps"])
                if group["momentum"] > 0:
                    b = st.setdefault("momentum_buffer", torch.zeros_like(p))
                    b.mul_(group["momentum"]).addcdiv_(g, den)
                    p.add_(b, alpha=-group["lr"])
                else:
                    p.addcdiv_(g, den, value=-group["lr"])

    def denominator(self, s, eps):
        return s.sqrt().add_(eps)


# --------------------------------------------------------------------------- the bugs

class AdamNoBiasCorrection(TorchStyleAdam):
    """O2 / seed 001: Adam as the seed writes it (no bias correction), shipped under torch's name.
    The first steps are 1/(1 - beta1) = 10x too small."""

    def update(self, p, m, v, t, lr, b1, b2, eps, group):
        p.addcdiv_(m, v.sqrt().add_(eps), value=-lr)


class RMSpropEpsInsideSqrt(TorchStyleRMSprop):
    """O1: TensorFlow's ``sqrt(u + eps)`` in a class that claims torch's RMSprop (pytorch#23796, optax#532)."""

    def denominator(self, s, eps):
        return (s + eps).sqrt()


class AdamWDecayAfterUpdate(TorchStyleAdamW):
    """O5: AdamW's decay applied after the Adam update instead of before (HF transformers#35504 order)."""

    decoupled = False

    def step(self, closure=None):
        for group in self.param_groups:
            group["_wd"], group["weight_decay"] = group["weight_decay"], 0.0
        try:
            super().step(closure)
        finally:
            for group in self.param_groups:
                group["weight_decay"] = group.pop("_wd")
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.mul_(1 - group["lr"] * group["weight_decay"])


class AdamDecoupledDecay(TorchStyleAdam):
    """Adam whose ``weight_decay`` is decoupled (AdamW's), under Adam's name: L2 in the gradient was expected."""

    decoupled = True


class SGDZeroBufferDampening(TorchStyleSGD):
    """O4: the momentum buffer starts at zero, so the first step is damped (mlx#473, torch/optim#163)."""

    def first_buffer(self, g, d):
        return g * (1 - d)


class SGDNesterovOldBuffer(TorchStyleSGD):
    """O3: Nesterov's look-ahead with the buffer of the previous step, ``g + mu b_{t-1}`` (momentum applied
    before it is updated; pytorch#1099, keras#14115)."""

    def nesterov(self, g, buf, prev, mu):
        return g.add(prev, alpha=mu)


class SGDCachedLR(TorchStyleSGD):
    """The learning rate read once at construction: schedulers and lr finders (seed 001) change nothing."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._lrs = [g["lr"] for g in self.param_groups]

    def lr_of(self, group):
        return self._lrs[self.param_groups.index(group)]


class SGDNoneGradAsZero(TorchStyleSGD):
    """A parameter without gradient treated as a zero gradient: weight decay and momentum still move it."""

    def grad_of(self, p):
        return torch.zeros_like(p) if p.grad is None else p.grad


class SGDWeightDecayOnlyWithMomentum(TorchStyleSGD):
    """O4: weight decay ignored when momentum is 0 (mlx#473)."""

    def decay(self, g, p, wd, mu):
        return g.add(p, alpha=wd) if mu else g


class AdamStateOutsideStateDict(TorchStyleAdam):
    """Moments kept in a private dict instead of ``self.state``: ``state_dict`` does not save them, and a
    resumed run restarts Adam from zero."""

    def moments(self, p):
        if not hasattr(self, "_private"):
            self._private = {}
        st = self._private.setdefault(id(p), {})
        if "step" not in st:
            st["step"] = torch.tensor(0.0, dtype=torch.float64)
            st["exp_avg"] = torch.zeros_like(p)
            st["exp_avg_sq"] = torch.zeros_like(p)
        return st


class AdamGroupHyperparametersIgnored(TorchStyleAdam):
    """The constructor's defaults used for every param group (``self.defaults`` instead of ``group``)."""

    def update(self, p, m, v, t, lr, b1, b2, eps, group):
        d = self.defaults
        c1, c2 = 1 - b1**t, 1 - b2**t
        p.addcdiv_(m, (v.sqrt() / math.sqrt(c2)).add_(d["eps"]), value=-d["lr"] / c1)


class AdamHalfSecondMoment(TorchStyleAdam):
    """``exp_avg_sq`` stored in bfloat16 to save memory: float32 runs lose the update's accuracy."""

    def moments(self, p):
        st = super().moments(p)
        if st["exp_avg_sq"].dtype != torch.bfloat16 and p.dtype == torch.float32:
            st["exp_avg_sq"] = st["exp_avg_sq"].to(torch.bfloat16)
        return st

    def update(self, p, m, v, t, lr, b1, b2, eps, group):
        super().update(p, m, v.to(p.dtype), t, lr, b1, b2, eps, group)


class SGDForeachIgnoresMomentum(TorchStyleSGD):
    """A second (``foreach=True``) code path that never got momentum: the loop path is right, the fast one is
    plain SGD (torch tests foreach against the for-loop for this reason)."""

    @torch.no_grad()
    def step(self, closure=None):
        if not any(g.get("foreach") for g in self.param_groups):
            return super().step(closure)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            torch._foreach_add_(params, [p.grad for p in params], alpha=-group["lr"])


class AdamRejectsZeroSize(TorchStyleAdam):
    """Fails on a zero-size parameter (``p.grad.abs().max()`` of an empty tensor; pytorch#100701)."""

    def check(self, p):
        if float(p.grad.abs().max()) > 1e30:
            raise FloatingPointError("gradient overflow")


class AdamOldSignature(Optimizer):
    """A constructor that does not take torch's hyperparameters (``beta1, beta2`` instead of ``betas``)."""

    def __init__(self, params, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
        super().__init__(params, dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps))

    def step(self, closure=None):
        raise NotImplementedError


class AdamStepFromZero(TorchStyleAdam):
    """The step counter advanced after the update: bias corrections 1 - beta^0 = 0 on the first step, inf/NaN."""

    def update(self, p, m, v, t, lr, b1, b2, eps, group):
        t = t - 1
        c1, c2 = 1 - b1**t, 1 - b2**t
        with torch.no_grad():
            p.copy_(p - (lr / c1 if c1 else math.inf) * m / (v.sqrt() / (math.sqrt(c2) if c2 else 0.0) + eps))


BUGS = [
    ("AdamNoBiasCorrection", "adam", ["test_trajectory", "test_large_eps"], "bias correction"),
    ("RMSpropEpsInsideSqrt", "rmsprop", ["test_large_eps"], "--convention tf"),
    ("AdamWDecayAfterUpdate", "adamw", ["test_weight_decay"], "weight decay"),
    ("AdamDecoupledDecay", "adam", ["test_weight_decay"], "--reference adamw"),
    ("SGDZeroBufferDampening", "sgd", ["test_trajectory"], "starting at zero"),
    ("SGDNesterovOldBuffer", "sgd", ["test_trajectory"], "Nesterov"),
    ("SGDCachedLR", "sgd", ["test_lr_change"], "cached lr"),
    ("SGDNoneGradAsZero", "sgd", ["test_missing_gradients"], "None gradient treated as zero"),
    ("SGDWeightDecayOnlyWithMomentum", "sgd", ["test_weight_decay"], "weight decay ignored"),
    ("AdamStateOutsideStateDict", "adam", ["test_state_dict"], "load_state_dict"),
    ("AdamGroupHyperparametersIgnored", "adam", ["test_param_groups"], "param group 1"),
    ("AdamHalfSecondMoment", "adam", ["test_float32"], "float32"),
    ("SGDForeachIgnoresMomentum", "sgd", ["test_flags"], "foreach"),
    ("AdamRejectsZeroSize", "adam", ["test_missing_gradients"], "step() raised"),
    ("AdamOldSignature", "adam", ["test_trajectory", "test_state_dict"], "hyperparameters"),
    ("AdamStepFromZero", "adam", ["test_trajectory"], "NaN"),
]
