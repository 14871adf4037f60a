"""Dropout (seed 001): drop rate, scaling in training (inverted) or at test time (direct), eval, independence.

Runs against targets of the dropout family (``--kind torch-dropout``); ``--convention direct``
selects seed 001's direct dropout, the default is inverted (torch, Keras, Flax).  The reference is
``bnverify.reference.dropout``; the statistical bounds are ``bnverify.tolerances.DROPOUT_*``.

What each check records: ``test_scaling`` compares values with the reference within a rounding bound,
so its err/tol is that error over its tolerance.  The drop rate and the mask overlap are binomial
z-tests and p=0/p=1 exact counts: no err/tol, but the counts and the test under their own names
(``dropped``, ``expected_dropped``, ``overlap``, ``expected_overlap``, ``z``, ``z_bound``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bnverify import tolerances as tols
from bnverify.compare import CheckFailure, to_f64
from bnverify.reference import dropout as ref

pytestmark = [pytest.mark.bnverify_suite("dropout"), pytest.mark.bnverify_tier("quick")]


@pytest.fixture
def seed(request):
    return int(request.config.getoption("bn_seed") or 0) % (2**31)


def _x(n: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inputs bounded away from 0, so a dropped element (0) is never confused with a kept one."""
    g = torch.Generator().manual_seed(seed)
    mag = 0.5 + torch.rand(n, generator=g, dtype=torch.float64)
    sign = torch.where(torch.rand(n, generator=g, dtype=torch.float64) < 0.5, -1.0, 1.0)
    return (mag * sign).to(dtype).reshape(-1, 100)


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.8, 1.0])
def test_drop_rate(bn_target, bn_check, seed, p):
    """The fraction of dropped elements is p (binomial z-test); p=0 is the identity, p=1 drops everything."""
    torch.manual_seed(seed)
    x = _x(tols.DROPOUT_N, seed)
    y = bn_target.instance(p).forward(x, training=True)
    n, k = x.numel(), int((y == 0).sum())
    bn_check.metric("dropped", k)  # counts and a z-test, not an error over a tolerance: no err/tol
    if p in (0.0, 1.0):
        want = 0 if p == 0.0 else n
        bn_check.metric("expected_dropped", want)
        if k != want:
            raise CheckFailure(f"dropout with p={p:g} dropped {k} of {n} elements; expected {want}"
                               + ("" if p else " (p=0 must be the identity)"))
        if p == 1.0 and not bool(torch.isfinite(y).all()):
            bn_check.metric("nonfinite", int((~torch.isfinite(y)).sum()))
            raise CheckFailure("dropout with p=1 returned NaN/inf: the 1/(1-p) scale must not be applied when "
                               "every element is dropped")
        return
    sd = math.sqrt(n * p * (1 - p))
    z = abs(k - n * p) / sd
    bn_check.metric("expected_dropped", n * p)
    bn_check.metric("z", z)
    bn_check.metric("z_bound", tols.DROPOUT_Z)
    if z > tols.DROPOUT_Z:
        rate = k / n
        cause = ""
        if abs(rate - (1 - p)) * n <= tols.DROPOUT_Z * sd:
            cause = "\n  likely cause: p is used as the keep probability (cs231n's dropout p keeps); torch's p drops"
        raise CheckFailure(f"dropout with p={p:g} dropped {k} of {n} elements (|z| = {z:.1f} > {tols.DROPOUT_Z:g}); "
                           f"expected {n * p:.0f} +- {sd:.1f} (binomial), rate {rate:.4f}{cause}")


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_scaling(bn_target, bn_check, seed, p):
    """Inverted: kept x/(1-p) in training, identity in eval; direct: kept x, eval (1-p) x; eval deterministic."""
    mode = bn_target.convention.scaling
    torch.manual_seed(seed)
    inst = bn_target.instance(p)
    x = _x(20000, seed + 1)
    x64 = to_f64(x)

    y = to_f64(inst.forward(x, training=True))
    keep = y != 0
    expected = ref.dropout_train(x64, keep, p, mode)
    bound = tols.dropout_train_bound(expected, x.dtype)
    err = np.abs(y - expected)
    ratio = _ratio(err, bound) if keep.any() else 0.0
    bn_check.observe(ratio)
    if ratio > 1:
        i = _worst(err, bound)
        got_scale = float(np.median(y[keep] / x64[keep]))
        hints = [(1.0, "no scaling in training: that is direct dropout" + (
                     "; pass --convention direct if eval multiplies by (1-p)" if mode == "inverted" else "")),
                 (1 / (1 - p), "scaling by 1/(1-p) in training: that is inverted dropout (the default convention)"),
                 (1 / p, "scaling by 1/p: p is used as the keep probability")]
        cause = next((h for s, h in hints if abs(got_scale - s) <= tols.DROPOUT_SCALE_MATCH * s), "")
        raise CheckFailure(
            f"training-mode dropout ({mode}, p={p:g}): kept element {i} expected {expected.flat[i]:.7g}, got "
            f"{y.flat[i]:.7g}, |error| {err.flat[i]:.3g} = {ratio:.3g} x tolerance (2 roundings in "
            f"{str(x.dtype).replace('torch.', '')}, safety {tols.SAFETY:g}); kept elements are scaled by "
            f"{got_scale:.6g}, expected {1 / (1 - p) if mode == 'inverted' else 1.0:.6g}"
            + (f"\n  likely cause: {cause}" if cause else ""))

    ye1 = to_f64(inst.forward(x, training=False))
    ye2 = to_f64(inst.forward(x, training=False))
    exp_e = ref.dropout_eval(x64, p, mode)
    err_e = np.abs(ye1 - exp_e)
    bound_e = tols.dropout_eval_bound(exp_e, x.dtype)
    ratio_e = _ratio(err_e, bound_e)
    bn_check.observe(ratio_e)
    differ = int(np.sum(~((ye1 == ye2) | (np.isnan(ye1) & np.isnan(ye2)))))
    if differ and ratio_e <= 1:  # within the tolerance both times, yet not the same: not an err/tol verdict
        bn_check.not_a_ratio()
        bn_check.metric("eval_calls_differ", differ)
        raise CheckFailure(f"eval-mode dropout is not deterministic: two calls on the same input differ in {differ} "
                           f"of {ye1.size} elements (each within the tolerance of the expected output)")
    if ratio_e > 1:
        zeros = int((ye1 == 0).sum())
        if zeros:
            cause = f"{zeros} elements are zero in eval: eval still drops (seed 001: no dropout at test time)"
        elif np.all(np.abs(ye1 - x64 * (1 - p)) <= tols.dropout_eval_bound(x64 * (1 - p), x.dtype)):
            cause = "eval multiplies by (1-p): direct dropout" + (
                "; pass --convention direct if training does not scale" if mode == "inverted" else "")
        elif np.all(np.abs(ye1 - x64) <= tols.dropout_eval_bound(x64, x.dtype)):
            cause = "eval is the identity: inverted dropout (scale in training); drop --convention direct"
        else:
            cause = "eval output is neither x nor (1-p) x"
        if differ:
            cause += f"; two eval calls on the same input also differ in {differ} of {ye1.size} elements"
        i = _worst(err_e, bound_e)
        raise CheckFailure(f"eval-mode dropout ({mode}, p={p:g}): element {i} expected {exp_e.flat[i]:.7g}, got "
                           f"{ye1.flat[i]:.7g}, |error| {err_e.flat[i]:.3g} = {ratio_e:.3g} x tolerance\n"
                           f"  likely cause: {cause}")


@pytest.mark.parametrize("p", [0.3, 0.5])
def test_independent_masks(bn_target, bn_check, seed, p):
    """Masks of successive calls, and of the two halves of one call, overlap as independent masks do (rate p^2)."""
    torch.manual_seed(seed)
    inst = bn_target.instance(p)
    x = _x(tols.DROPOUT_N, seed + 2)
    d1 = (inst.forward(x, training=True) == 0).reshape(-1).numpy()
    d2 = (inst.forward(x, training=True) == 0).reshape(-1).numpy()
    half = d1.size // 2
    tests = []
    for what, a, b in (("two calls on the same input", d1, d2),
                       ("the two halves of one call", d1[:half], d1[half:2 * half])):
        n, q = a.size, p * p
        k = int((a & b).sum())
        sd = math.sqrt(n * q * (1 - q))
        tests.append((abs(k - n * q) / sd, what, a, b, n, q, k, sd))
    z, what, a, b, n, q, k, sd = next((t for t in tests if t[0] > tols.DROPOUT_Z), max(tests, key=lambda t: t[0]))
    # a z-test on the overlap counts, not an error over a tolerance: no err/tol; the failing (else the
    # largest) of the two tests is recorded
    bn_check.metric("overlap", k)
    bn_check.metric("expected_overlap", n * q)
    bn_check.metric("z", z)
    bn_check.metric("z_bound", tols.DROPOUT_Z)
    if z > tols.DROPOUT_Z:
        same = bool(np.array_equal(a, b))
        raise CheckFailure(
            f"dropout masks of {what} are not independent (|z| = {z:.1f} > {tols.DROPOUT_Z:g}): both dropped {k} "
            f"of {n} positions, expected {n * q:.0f} +- {sd:.1f} for independent masks with p={p:g}"
            + ("\n  likely cause: the same mask every time (a generator re-seeded per call, or a cached mask)"
               if same else "\n  likely cause: a mask reused across positions (one mask per row or per call)"))


def _ratio(err: np.ndarray, bound: np.ndarray) -> float:
    """The largest error over its bound; inf where an error is NaN or inf (a NaN must never pass)."""
    r = err / np.maximum(bound, 1e-300)
    return math.inf if not np.all(np.isfinite(r)) else float(np.max(r)) if r.size else 0.0


def _worst(err: np.ndarray, bound: np.ndarray) -> int:
    """The flat index of the largest error over its bound (a NaN or inf first)."""
    r = err / np.maximum(bound, 1e-300)
    return int(np.argmax(np.where(np.isfinite(r), r, np.inf)))
