"""Dropout, the other layer whose training and test behaviour differ (seed 001): adapter and checks.

Kind ``torch-dropout`` (named with ``--kind torch-dropout``, never detected): an ``nn.Module`` class
with ``torch.nn.Dropout``'s constructor ``(p=0.5, inplace=False)`` that honours ``.train()``/``.eval()``.
``p`` is the probability of dropping an element.  Scaling convention (``--convention``):

* ``inverted`` (default; torch, Keras, Flax): training ``x * mask / (1 - p)``, eval identity;
* ``direct`` (seed 001's "Rezim 1"): training ``x * mask``, eval ``(1 - p) x``.

Checks: the drop rate (a binomial z-test), the scale of kept elements in training, eval output
(identity or ``(1 - p) x``, deterministic), and independence of the masks across calls and
across positions.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from bnverify import tolerances as tols
from bnverify.adapter import BNTarget, TargetError, _summarise_exception
from bnverify.compare import CheckFailure, to_f64
from bnverify.reference import dropout as ref

SCALINGS = ("inverted", "direct")
_FRAMEWORKS = {"torch": "inverted", "keras": "inverted", "flax": "inverted", "cs231n": "inverted"}


def scaling_for(convention: str | None) -> str:
    """The dropout scaling a ``--convention`` value means for a torch-dropout target."""
    if convention is None:
        return "inverted"
    if convention in SCALINGS:
        return convention
    if convention in _FRAMEWORKS:
        return _FRAMEWORKS[convention]
    raise ValueError(f"unknown dropout convention {convention!r}: choose inverted or direct")


class DropoutInstance:
    """One constructed dropout module; every call guarded like a batch-norm instance's."""

    def __init__(self, target: BNTarget, p: float) -> None:
        self.target = target
        self.p = p
        self.module = self.call("constructor", lambda: target.obj(p=p))
        if not isinstance(self.module, torch.nn.Module):
            raise TargetError(f"{target.name}(p={p}) returned {type(self.module).__name__}, not an nn.Module")

    def call(self, what: str, fn: Any) -> Any:
        try:
            return self.target.watchdog.run(fn, self.target.call_timeout)
        except TargetError:
            raise
        except Exception as exc:
            raise TargetError(f"{self.target.name} {what} raised {_summarise_exception(exc)}") from exc

    def forward(self, x: torch.Tensor, *, training: bool) -> torch.Tensor:
        self.call("train()" if training else "eval()", lambda: self.module.train(training))
        xin = x.clone()
        out = self.call("forward", lambda: self.module(xin))
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            raise TargetError(f"{self.target.name} forward returned {type(out).__name__} "
                              f"{tuple(getattr(out, 'shape', ()))} for input {tuple(x.shape)}")
        if not torch.equal(xin, x):
            raise CheckFailure(f"{self.target.name} modified its input in place with inplace=False")
        return out


def _x(n: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inputs bounded away from 0, so a dropped element (0) is never confused with a kept one."""
    g = torch.Generator().manual_seed(seed)
    mag = 0.5 + torch.rand(n, generator=g, dtype=torch.float64)
    sign = torch.where(torch.rand(n, generator=g, dtype=torch.float64) < 0.5, -1.0, 1.0)
    return (mag * sign).to(dtype).reshape(-1, 100)


def drop_rate(target: BNTarget, p: float, seed: int, check: Any) -> None:
    """The fraction of zeros in training is p (z-test at ``tolerances.DROPOUT_Z`` sigma)."""
    torch.manual_seed(seed)
    inst = DropoutInstance(target, p)
    x = _x(tols.DROPOUT_N, seed)
    y = inst.forward(x, training=True)
    n = x.numel()
    k = int((y == 0).sum())
    if p in (0.0, 1.0):
        want = 0 if p == 0.0 else n
        check.observe(0.0 if k == want else math.inf)
        if k != want:
            raise CheckFailure(f"dropout with p={p:g} dropped {k} of {n} elements; expected {want}"
                               + ("" if p else " (p=0 must be the identity)"))
        if p == 1.0 and not bool(torch.isfinite(y).all()):
            raise CheckFailure("dropout with p=1 returned NaN/inf: the 1/(1-p) scale must not be applied when "
                               "every element is dropped")
        return
    sd = math.sqrt(n * p * (1 - p))
    z = abs(k - n * p) / sd
    check.observe(z / tols.DROPOUT_Z)
    if z > tols.DROPOUT_Z:
        rate = k / n
        cause = ""
        if abs(rate - (1 - p)) * n <= tols.DROPOUT_Z * sd:
            cause = "\n  likely cause: p is used as the keep probability (cs231n's dropout p keeps); torch's p drops"
        raise CheckFailure(f"dropout with p={p:g} dropped {k} of {n} elements (rate {rate:.4f}); expected "
                           f"{n * p:.0f} +- {sd:.1f} (binomial), |z| = {z:.1f} > {tols.DROPOUT_Z:g}{cause}")


def scaling(target: BNTarget, p: float, seed: int, check: Any) -> None:
    """Kept elements are x/(1-p) in training (inverted) or x (direct); eval gives x or (1-p) x, deterministically."""
    mode = target.dropout_scaling
    torch.manual_seed(seed)
    inst = DropoutInstance(target, p)
    x = _x(20000, seed + 1)
    y = to_f64(inst.forward(x, training=True))
    x64 = to_f64(x)
    keep = y != 0
    u = tols.unit_roundoff(x.dtype)
    expected = ref.dropout_train(x64, keep, p, mode)  # type: ignore[arg-type]
    bound = tols.SAFETY * 2 * u * np.abs(expected)
    err = np.abs(y - expected)
    ratio = float(np.max(err / np.maximum(bound, 1e-300))) if keep.any() else 0.0
    check.observe(ratio)
    if ratio > 1:
        i = int(np.argmax(err))
        got_scale = float(np.median(y[keep] / x64[keep]))
        hints = [(1.0, "no scaling in training: that is direct dropout" + (
                     "; pass --convention direct if eval multiplies by (1-p)" if mode == "inverted" else "")),
                 (1 / (1 - p), "scaling by 1/(1-p) in training: that is inverted dropout (the default convention)"),
                 (1 / p, "scaling by 1/p: p is used as the keep probability")]
        cause = next((h for s, h in hints if abs(got_scale - s) <= 1e-4 * s), "")
        raise CheckFailure(
            f"training-mode dropout ({mode}, p={p:g}): kept element {i} expected {expected.flat[i]:.7g}, got "
            f"{y.flat[i]:.7g}, |error| {err.flat[i]:.3g} = {ratio:.3g} x tolerance (2 roundings in "
            f"{str(x.dtype).replace('torch.', '')}, safety {tols.SAFETY:g}); kept elements are scaled by "
            f"{got_scale:.6g}, expected {1 / (1 - p) if mode == 'inverted' else 1.0:.6g}"
            + (f"\n  likely cause: {cause}" if cause else ""))
    ye1 = to_f64(inst.forward(x, training=False))
    ye2 = to_f64(inst.forward(x, training=False))
    exp_e = ref.dropout_eval(x64, p, mode)  # type: ignore[arg-type]
    err_e = np.abs(ye1 - exp_e)
    bound_e = tols.SAFETY * u * np.abs(exp_e)
    ratio_e = float(np.max(err_e / np.maximum(bound_e, 1e-300)))
    check.observe(ratio_e)
    if not np.array_equal(ye1, ye2):
        raise CheckFailure("eval-mode dropout is not deterministic: two calls on the same input differ "
                           "(elements are still dropped in eval: is the training flag read?)")
    if ratio_e > 1:
        zeros = int((ye1 == 0).sum())
        if zeros:
            cause = f"{zeros} elements are zero in eval: eval still drops (seed 001: no dropout at test time)"
        elif np.allclose(ye1, x64 * (1 - p), rtol=4 * u):
            cause = "eval multiplies by (1-p): direct dropout" + (
                "; pass --convention direct if training does not scale" if mode == "inverted" else "")
        elif np.allclose(ye1, x64, rtol=4 * u):
            cause = "eval is the identity: inverted dropout (scale in training); drop --convention direct"
        else:
            cause = "eval output is neither x nor (1-p) x"
        i = int(np.argmax(err_e))
        raise CheckFailure(f"eval-mode dropout ({mode}, p={p:g}): element {i} expected {exp_e.flat[i]:.7g}, got "
                           f"{ye1.flat[i]:.7g} ({ratio_e:.3g} x tolerance)\n  likely cause: {cause}")


def independence(target: BNTarget, p: float, seed: int, check: Any) -> None:
    """Masks of two calls, and of the two halves of one call, overlap as independent masks do (rate p^2)."""
    torch.manual_seed(seed)
    inst = DropoutInstance(target, p)
    x = _x(tols.DROPOUT_N, seed + 2)
    d1 = (inst.forward(x, training=True) == 0).reshape(-1).numpy()
    d2 = (inst.forward(x, training=True) == 0).reshape(-1).numpy()
    half = d1.size // 2
    worst = 0.0
    for what, a, b in (("two calls on the same input", d1, d2),
                       ("the two halves of one call", d1[:half], d1[half:2 * half])):
        n = a.size
        q = p * p
        k = int((a & b).sum())
        sd = math.sqrt(n * q * (1 - q))
        z = abs(k - n * q) / sd
        worst = max(worst, z / tols.DROPOUT_Z)
        if z > tols.DROPOUT_Z:
            check.observe(worst)
            same = bool(np.array_equal(a, b))
            raise CheckFailure(
                f"dropout masks of {what} are not independent: both dropped {k} of {n} positions, expected "
                f"{n * q:.0f} +- {sd:.1f} for independent masks with p={p:g} (|z| = {z:.1f})"
                + ("\n  likely cause: the same mask every time (a generator re-seeded per call, or a cached mask)"
                   if same else "\n  likely cause: a mask reused across positions (one mask per row or per call)"))
    check.observe(worst)
