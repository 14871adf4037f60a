"""Invariance checks: the properties that make batch norm work, checked on the target against itself.

* Scale (exact): for ``a = +-2^k``, ``BN(a x; eps a^2) = sign(a) (BN(x; eps) - beta) + beta``.
  ``a x`` and ``eps a^2`` are exact in binary floating point, so a correct
  target is equal bit for bit (``bnverify.tolerances``, invariance section).
* Scale (eps fixed): for ``a = 10^s`` with ``a^2 var >> eps``, ``BN(a x; eps)``
  stays within the two evaluations' bounds plus the exact effect of eps.
* Shift: ``BN(x + b) = BN(x)`` for a per-channel ``b`` (seeds 000/004: a bias
  before batch norm is redundant), and the gradient reaching that bias,
  ``sum_n dL/dz``, is zero.
* Gradients through a preceding layer (seed 003): with ``z = layer(u, W)``
  formed by the harness in float64, ``W -> a W`` leaves ``dL/du`` unchanged
  and scales ``dL/dW`` by ``1/a``; each unit's ``<w_k, dL/dw_k>`` is zero up
  to the exact eps term ``dgamma_k eps/(var_k + eps)``, so plain SGD never
  shrinks ``||w_k||``.  The target's own backward supplies ``dL/dz``; the
  harness does the layer's part, so every kind of target is covered.
* Batch permutation: in training, permuting the batch permutes the output and
  the input gradient and changes nothing else (parameter gradients, running
  statistics).

Each check sweeps its scale (or shift) outward from 1, records the worst
error/tolerance ratio and the scale where it occurred, and on failure reports
the failing scale nearest 1 (``breaking_scale``) with the full comparison.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np
import torch

from bnverify import bncheck, diagnose
from bnverify import tolerances as tols
from bnverify.compare import CheckFailure, Comparison, compare, to_f64
from bnverify.reference import batchnorm as oracle
from bnverify.strategies import Case, tensor, to_dtype_values

EXACT_EXPONENTS: dict[torch.dtype, tuple[int, ...]] = {
    # candidates; each case keeps those with a^2 (var + eps) inside tolerances.scale_window(dtype)
    torch.float32: (1, 3, 8, 16, 24, 32, 40, 48),
    torch.float64: (1, 3, 10, 30, 60, 100, 150, 200, 250),
}
GRAD_EXPONENTS: dict[torch.dtype, tuple[int, ...]] = {
    torch.float32: (1, 10, 20, 30, 40),
    torch.float64: (1, 10, 40, 100, 200),
}
FIXED_DECADES: dict[torch.dtype, tuple[int, ...]] = {
    torch.float32: (1, 2, 4, 6, 9, 12),
    torch.float64: (1, 2, 4, 6, 9, 12, 20, 40),
}
SHIFT_DECADES: dict[torch.dtype, tuple[int, ...]] = {
    # |b| / std of the channel; the forward bound grows with |mean|/std, so large shifts are allowed
    # exactly the cancellation that subtracting a large mean costs.
    torch.float32: (-1, 0, 1, 2, 3),
    torch.float64: (-1, 0, 1, 2, 4, 6),
}


def _id(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _sweep(exponents: Sequence[int], base: float) -> list[float]:
    """Scales ``base^(+-k)`` ordered by distance from 1 (so the first failure is the nearest one)."""
    out: list[float] = []
    for k in exponents:
        out += [base ** (-k), base**k]
    return out


def _in_window(x: np.ndarray, eps: float, dtype: torch.dtype) -> Callable[[float], bool]:
    """Whether ``a^2 (var_c + eps)`` lies inside the dtype's scale window for every channel ``c``."""
    _, var, _ = oracle.batch_stats(x)
    lo, hi = tols.scale_window(dtype)
    vmin, vmax = float(var.min()) + eps, float(var.max()) + eps
    return lambda a: a * a * vmin >= lo and a * a * vmax <= hi


def _beta(case: Case) -> np.ndarray:
    nd = case.x.ndim
    return oracle.per_channel(np.zeros(case.shape[1]) if case.beta is None else case.beta, nd)


@dataclass
class _Row:
    scale: float
    cmp: Comparison


def _observe(check: Any, rows: list[_Row], label: str) -> None:
    """Record every ratio, and the scale of the worst one seen by this check so far."""
    data = getattr(check, "data", None)
    for r in rows:
        prev = data.get("worst_ratio") if isinstance(data, dict) else None
        check.observe(r.cmp.ratio, r.cmp.max_abs_err)
        if prev is None or r.cmp.ratio > prev:
            check.metric(f"worst_{label}", r.scale)


def _verdict(check: Any, rows: list[_Row], *, title: str, label: str, case: str,
             causes: Callable[[_Row], list[str]] | None = None) -> None:
    _observe(check, rows, label)
    bad = [r for r in rows if not r.cmp.ok]
    if not bad:
        return
    first = bad[0]
    worst = max(bad, key=lambda r: r.cmp.ratio)
    check.metric(f"breaking_{label}", first.scale)
    if causes is not None and not worst.cmp.causes:
        worst.cmp.causes = causes(worst)
    swept = ", ".join(f"{r.scale:.3g}{'' if r.cmp.ok else '!'}" for r in rows)
    held = [r.scale for r in rows if r.cmp.ok]
    lines = [
        f"{title} breaks at {label} {first.scale:.6g} (the failing {label} nearest 1; "
        f"{len(bad)} of {len(rows)} failed, worst {worst.cmp.ratio:.3g} x tolerance at {label} {worst.scale:.6g})",
        f"  {label}s checked (! = broken): {swept}",
    ]
    if held:
        lines.append(f"  holds for {label}s in [{min(held):.3g}, {max(held):.3g}] among those checked")
    lines.append(worst.cmp.report())
    lines.append(f"  case: {case}")
    raise CheckFailure("\n".join(lines))


def _train_out(target: Any, case: Case, device: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    inst, gamma, beta = bncheck.build(target, case, device)
    out = inst.forward(tensor(case.x, case.dtype, device), training=True)
    return to_f64(out), gamma, beta


# --------------------------------------------------------------------------- scale, forward

def scale_exact(target: Any, case: Case, device: str, check: Any, *, negative: bool = False) -> None:
    """``t(a x; eps a^2)`` equals ``sign(a) (t(x; eps) - beta) + beta`` for ``a = +-2^k`` (bit for bit, up to ulps)."""
    y0, gamma, beta = _train_out(target, case, device)
    b = _beta(case)
    tol = (tols.scale_negative_forward if negative else tols.scale_exact_forward)(
        case.x, gamma, beta, case.eps, case.dtype)
    sign = -1.0 if negative else 1.0
    expected = sign * (y0 - b) + b
    rows = []
    inside = _in_window(case.x, case.eps, case.dtype)
    for a in _sweep(EXACT_EXPONENTS[case.dtype], 2.0):
        if not inside(a):
            continue
        a = sign * a
        ca = replace(case, x=case.x * a, eps=case.eps * a * a)
        ya, _, _ = _train_out(target, ca, device)
        rows.append(_Row(a, compare(ya, expected, tol, f"output at a={a:.6g}, eps*a^2={ca.eps:.3g}")))
    title = ("sign flip: t(a x; eps a^2) - beta = -(t(x; eps) - beta) for a < 0" if negative
             else "scale invariance with eps scaled: t(a x; eps a^2) = t(x; eps) for a = 2^k")
    _verdict(check, rows, title=title, label="scale", case=case.describe(),
             causes=lambda r: diagnose.scale_break(r.scale, _rows_scales(rows)))


def _rows_scales(rows: list[_Row]) -> list[tuple[float, bool]]:
    return [(r.scale, r.cmp.ok) for r in rows]


def scale_fixed_eps(target: Any, case: Case, device: str, check: Any) -> None:
    """``t(a x; eps)`` within the derived bound of ``t(x; eps)`` for ``a = 10^s`` where ``a^2 var >= 10 eps``."""
    y0, gamma, beta = _train_out(target, case, device)
    r0, _ = oracle.forward_train(case.x, gamma, beta, case.eps)
    t0 = tols.forward_train(case.x, gamma, beta, case.eps, case.dtype)
    _, var, _ = oracle.batch_stats(case.x)
    vmin = float(var.min())
    rows = []
    for a in _sweep(FIXED_DECADES[case.dtype], 10.0):
        if a * a * vmin < tols.FIXED_EPS_MIN_RATIO * case.eps:
            continue
        xa = to_dtype_values(case.x * a, case.dtype)
        ya, _, _ = _train_out(target, replace(case, x=xa), device)
        ra, _ = oracle.forward_train(xa, gamma, beta, case.eps)
        ta = tols.forward_train(xa, gamma, beta, case.eps, case.dtype)
        tol = tols.triangle(ta, t0, "scale with eps fixed")
        rows.append(_Row(a, compare(ya, y0 + (ra - r0), tol, f"output at a={a:.3g} (eps={case.eps:.3g} fixed)")))
    check.metric("scales_checked", len(rows))
    _verdict(check, rows, title="scale invariance with eps fixed (a^2 var >= "
             f"{tols.FIXED_EPS_MIN_RATIO:g} eps): t(a x) = t(x) up to the effect of eps",
             label="scale", case=case.describe(),
             causes=lambda r: diagnose.scale_break(r.scale, _rows_scales(rows)))


# --------------------------------------------------------------------------- shift

def shift(target: Any, case: Case, device: str, check: Any, direction: np.ndarray) -> None:
    """``t(x + b) = t(x)`` for per-channel shifts ``b = 10^s std_c direction_c``."""
    y0, gamma, beta = _train_out(target, case, device)
    r0, _ = oracle.forward_train(case.x, gamma, beta, case.eps)
    t0 = tols.forward_train(case.x, gamma, beta, case.eps, case.dtype)
    _, var, _ = oracle.batch_stats(case.x)
    std = np.sqrt(var + case.eps)
    rows = []
    for s in SHIFT_DECADES[case.dtype]:
        b = oracle.per_channel(direction * std * 10.0**s, case.x.ndim)
        xb = to_dtype_values(case.x + b, case.dtype)
        yb, _, _ = _train_out(target, replace(case, x=xb), device)
        rb, _ = oracle.forward_train(xb, gamma, beta, case.eps)
        tb = tols.forward_train(xb, gamma, beta, case.eps, case.dtype)
        tol = tols.triangle(tb, t0, "shift")
        rows.append(_Row(10.0**s, compare(yb, y0 + (rb - r0), tol, f"output after a per-channel shift of {10.0**s:g} std")))
    _verdict(check, rows, title="shift invariance: t(x + b) = t(x) for a per-channel b (seeds 000/004)",
             label="shift (in stds)", case=case.describe(),
             causes=lambda r: ["the output depends on the absolute level of the input: the mean subtracted in "
                               "training is not the batch's own (a running/EMA mean, a stale or partial mean), or "
                               "the variance is taken around a point other than the batch mean"])


# --------------------------------------------------------------------------- a layer before the target

@dataclass(frozen=True)
class LayerCase:
    """``u -> z = layer(u, W) (+ bias) -> target``; all values float64, cast to ``dtype`` for the target."""

    layer: str  # "linear" or "conv"
    u: np.ndarray
    W: np.ndarray
    bias: np.ndarray | None
    dtype: torch.dtype
    eps: float
    gamma: np.ndarray
    beta: np.ndarray
    seed: int

    def describe(self) -> str:
        shape = "Linear" if self.layer == "linear" else "Conv2d(3x3, padding=1)"
        return (f"{shape} u {self.u.shape} -> W {self.W.shape}{' + bias' if self.bias is not None else ''} -> target, "
                f"{_id(self.dtype)}, eps={self.eps:.3g}, data seed {self.seed}")


def _layer(kind: str, u: torch.Tensor, W: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if kind == "linear":
        return torch.nn.functional.linear(u, W, bias)
    return torch.nn.functional.conv2d(u, W, bias, padding=1)


def layer_forward(lc: LayerCase, W: np.ndarray) -> np.ndarray:
    """``z`` in float64, then rounded to the target's dtype: the exact values the target receives."""
    b = None if lc.bias is None else torch.from_numpy(lc.bias)
    z = _layer(lc.layer, torch.from_numpy(lc.u), torch.from_numpy(W), b)
    return to_dtype_values(z.numpy(), lc.dtype)


def layer_backward(kind: str, u: np.ndarray, W: np.ndarray, dz: np.ndarray,
                   with_bias: bool = False) -> tuple[np.ndarray, ...]:
    """``(dL/du, dL/dW[, dL/dbias])`` in float64 for upstream ``dz`` (autograd through the layer)."""
    ut = torch.from_numpy(np.ascontiguousarray(u)).requires_grad_(True)
    wt = torch.from_numpy(np.ascontiguousarray(W)).requires_grad_(True)
    bt = torch.zeros(W.shape[0], dtype=torch.float64, requires_grad=True) if with_bias else None
    z = _layer(kind, ut, wt, bt)
    inputs = (ut, wt) + ((bt,) if bt is not None else ())
    grads = torch.autograd.grad(z, inputs, torch.from_numpy(np.ascontiguousarray(dz)))
    return tuple(g.numpy() for g in grads)


def _reduction_len(lc: LayerCase) -> int:
    return int(np.prod(lc.W.shape[1:])) + int(lc.u.shape[0] * (np.prod(lc.u.shape[2:]) if lc.u.ndim > 2 else 1))


def _target_dz(target: Any, lc: LayerCase, z: np.ndarray, dy: np.ndarray, eps: float, device: str) -> np.ndarray:
    case = Case(z, lc.dtype, eps, True, lc.gamma, lc.beta, 0.1, lc.layer, lc.seed)
    inst, _, _ = bncheck.build(target, case, device)
    inst.forward(tensor(z, lc.dtype, device), training=True, grad=True)
    grads = inst.backward(tensor(dy, lc.dtype, device))
    return to_f64(grads.dx)


def grad_scale(target: Any, lc: LayerCase, dy: np.ndarray, device: str, check: Any) -> None:
    """``W -> a W`` (``a = 2^k``, eps -> eps a^2): ``dL/du`` unchanged, ``a dL/d(aW) = dL/dW`` (seed 003)."""
    z0 = layer_forward(lc, lc.W)
    dz0 = _target_dz(target, lc, z0, dy, lc.eps, device)
    du0, dW0 = layer_backward(lc.layer, lc.u, lc.W, dz0)
    tol_dz = tols.scale_exact_dx(z0, dy, lc.gamma, lc.eps, lc.dtype)
    tdu, tdW = layer_backward(lc.layer, np.abs(lc.u), np.abs(lc.W), tol_dz)
    rdu, rdW = layer_backward(lc.layer, np.abs(lc.u), np.abs(lc.W), np.abs(dz0))
    rr = tols.layer_product_rounding(_reduction_len(lc))
    text = (tols.scale_exact_forward(z0, lc.gamma, lc.beta, lc.eps, lc.dtype).explanation
            + "; carried through the layer as |ddz| @ |W| and |ddz|^T @ |u|, plus float64 rounding of the products")
    tol_u = tols.Tolerance(tdu + rr * rdu, text)
    tol_W = tols.Tolerance(tdW + rr * rdW, text)
    rows_u, rows_w = [], []
    inside = _in_window(z0, lc.eps, lc.dtype)
    for a in _sweep(GRAD_EXPONENTS[lc.dtype], 2.0):
        if not inside(a):
            continue
        za = layer_forward(lc, a * lc.W)
        dza = _target_dz(target, lc, za, dy, lc.eps * a * a, device)
        dua, dWa = layer_backward(lc.layer, lc.u, a * lc.W, dza)
        rows_u.append(_Row(a, compare(dua, du0, tol_u, f"dL/du with W -> {a:.6g} W")))
        rows_w.append(_Row(a, compare(a * dWa, dW0, tol_W, f"{a:.6g} * dL/d(aW) with W -> {a:.6g} W",
                                      channel_axis=0)))
    rows = [max(ru, rw, key=lambda r: r.cmp.ratio) for ru, rw in zip(rows_u, rows_w)]
    _verdict(check, rows, title="gradient scale invariance through the preceding layer: dL/du unchanged and "
             "dL/dW scaled by 1/a when W -> a W (eps -> eps a^2)", label="scale", case=lc.describe(),
             causes=lambda r: diagnose.scale_break(r.scale, _rows_scales(rows), gradient=True))


def linear_bias_grad(target: Any, lc: LayerCase, dy: np.ndarray, device: str, check: Any) -> None:
    """The gradient reaching the bias of the preceding layer, ``sum_n dL/dz``, is zero (seeds 000/004)."""
    assert lc.bias is not None
    z = layer_forward(lc, lc.W)
    dz = _target_dz(target, lc, z, dy, lc.eps, device)
    db = layer_backward(lc.layer, lc.u, lc.W, dz, with_bias=True)[2]
    _, cache = oracle.forward_train(z, lc.gamma, lc.beta, lc.eps)
    dx, dg, dbeta = oracle.backward(dy, cache)
    bt = tols.backward_train(z, dy, lc.gamma, lc.eps, lc.dtype, dx, dg, dbeta)
    axes = oracle.reduction_axes(z.ndim)
    bound = tols.sum_of_bounds(bt.dx.bound, dx, axes)
    tol = tols.Tolerance(bound, "sum over the batch of the backward's elementwise dx bound, plus float64 "
                                "rounding of the sum; " + bt.dx.explanation)
    cmp = compare(db, np.zeros_like(db), tol, "dL/d(bias) of the preceding layer", channel_axis=0)
    check.observe(cmp.ratio, cmp.max_abs_err)
    if not cmp.ok:
        # without the -mean(dy) term, sum_n dx = gamma / sigma * sum_n dy exactly
        missing = (cache.gamma * cache.ivar).reshape(-1) * dbeta
        if np.all(np.abs(db - missing) <= 0.01 * np.abs(missing) + bound):
            cmp.causes.append("the bias gradient is proportional to sum(dy) per channel: the backward lacks the "
                              "-mean(dy) term that the mean subtraction contributes (the batch mean treated as "
                              "a constant)")
        raise CheckFailure("a bias before batch norm is redundant, so no gradient may reach it (seeds 000/004)\n"
                           + cmp.report() + f"\n  case: {lc.describe()}")


def weight_orthogonality(target: Any, lc: LayerCase, dy: np.ndarray, device: str, check: Any,
                         steps: int = 3) -> None:
    """``<w_k, dL/dw_k> = dgamma_k eps/(var_k + eps)`` (0 as eps -> 0), and plain SGD never shrinks ``||w_k||``.

    Runs ``steps`` SGD steps on ``W`` with a learning rate that moves each
    weight row by about a tenth of its norm, and records the growth of the
    norms and the effective learning rate ``lr / ||w||^2`` they imply.
    """
    W = lc.W.copy()
    n0 = np.linalg.norm(W.reshape(W.shape[0], -1), axis=1)
    lr = None
    worst = 0.0
    cos_max = 0.0
    shrink_fail: str | None = None
    fail: tuple[int, Comparison] | None = None
    bias = np.zeros(W.shape[0]) if lc.bias is None else lc.bias
    for step in range(steps + 1):
        z = layer_forward(lc, W)
        zfull = layer_forward(replace(lc, dtype=torch.float64), W)
        dz = _target_dz(target, lc, z, dy, lc.eps, device)
        gW = layer_backward(lc.layer, lc.u, W, dz)[1]
        Wf, gf = W.reshape(W.shape[0], -1), gW.reshape(W.shape[0], -1)
        inner = (Wf * gf).sum(axis=1)
        _, cache = oracle.forward_train(z, lc.gamma, lc.beta, lc.eps)
        dx, dg, dbeta = oracle.backward(dy, cache)
        axes = oracle.reduction_axes(z.ndim)
        zc = z - oracle.per_channel(bias, z.ndim)
        expected = (dx * zc).sum(axis=axes)
        bt = tols.backward_train(z, dy, lc.gamma, lc.eps, lc.dtype, dx, dg, dbeta)
        bound = (tols.sum_of_bounds(bt.dx.bound, dz, axes, weight=zc)
                 + (np.abs(dz) * np.abs(zfull - z)).sum(axis=axes)
                 + tols.layer_product_rounding(_reduction_len(lc)) * (np.abs(Wf) * np.abs(gf)).sum(axis=1))
        tol = tols.Tolerance(bound, "sum over the batch of |z| times the backward's dx bound, plus the rounding of z "
                                    "to the target dtype and float64's of the products; " + bt.dx.explanation)
        cmp = compare(inner, expected, tol, f"<w_k, dL/dw_k> at SGD step {step}", channel_axis=0)
        check.observe(cmp.ratio, cmp.max_abs_err)
        worst = max(worst, cmp.ratio)
        gnorm = np.linalg.norm(gf, axis=1)
        wnorm = np.linalg.norm(Wf, axis=1)
        cos_max = max(cos_max, float(np.max(np.abs(inner) / np.maximum(wnorm * gnorm, 1e-300))))
        if not cmp.ok and fail is None:
            fail = (step, cmp)
        if step == steps:
            break
        if lr is None:
            lr = 0.1 * float(np.median(wnorm / np.maximum(gnorm, 1e-300)))
        Wn = Wf - lr * gf
        grow = (Wn**2).sum(axis=1) - wnorm**2
        allowed = -2 * lr * (np.maximum(expected, 0) + bound) - 4 * tols.ORACLE_U * wnorm**2
        if shrink_fail is None and np.any(grow < allowed):
            k = int(np.argmin(grow - allowed))
            shrink_fail = (f"SGD step {step} shrank ||w_{k}||^2 by {-grow[k]:.3g} (lr {lr:.3g}); orthogonality allows "
                           f"at most {-allowed[k]:.3g}")
        W = Wn.reshape(W.shape)
    nT = np.linalg.norm(W.reshape(W.shape[0], -1), axis=1)
    assert lr is not None
    check.metric("max_cosine_w_grad", cos_max)
    check.metric("norm_growth", float(np.max(nT / n0)))
    check.metric("effective_lr", float(np.median(lr / nT**2)))
    check.metric("effective_lr_ratio", float(np.median((lr / nT**2) / (lr / n0**2))))
    if fail is not None or shrink_fail is not None:
        lines = ["each unit's weights must be orthogonal to their gradient, <w_k, dL/dw_k> = dgamma_k eps/(var_k+eps) "
                 "(0 as eps -> 0; seed 003), so that plain SGD only grows ||w_k||"]
        if fail is not None:
            lines.append(fail[1].report())
        if shrink_fail is not None:
            lines.append(f"  {shrink_fail}")
        lines.append(f"  norm growth over {steps} steps up to x{float(np.max(nT / n0)):.4g}; max |cos(w_k, dL/dw_k)| "
                     f"{cos_max:.3g}")
        lines.append(f"  case: {lc.describe()}")
        raise CheckFailure("\n".join(lines))


# --------------------------------------------------------------------------- batch permutation

def permutation(target: Any, case: Case, device: str, check: Any, perm: np.ndarray, dy: np.ndarray) -> None:
    """Permuting the batch permutes the output and dx; dgamma, dbeta and the running statistics are unchanged."""
    x, xp = case.x, case.x[perm]
    res = []
    for xi, dyi in ((x, dy), (xp, dy[perm])):
        inst, gamma, beta = bncheck.build(target, case, device)
        y = to_f64(inst.forward(tensor(xi, case.dtype, device), training=True, grad=True))
        g = inst.backward(tensor(dyi, case.dtype, device))
        run = inst.get_running()
        res.append((y, g, None if run is None else (to_f64(run[0]), to_f64(run[1]))))
    (y1, g1, run1), (y2, g2, run2) = res
    ft = tols.forward_train(x, gamma, beta, case.eps, case.dtype)
    _, cache = oracle.forward_train(x, gamma, beta, case.eps)
    dx, dg, db = oracle.backward(dy, cache)
    bt = tols.backward_train(x, dy, gamma, case.eps, case.dtype, dx, dg, db)
    two = "two evaluations, each within its own bound of the permutation-invariant oracle: "
    cmps = [
        compare(y2, y1[perm], tols.Tolerance(2 * ft.bound[perm], two + ft.explanation), "output of the permuted batch"),
        compare(to_f64(g2.dx), to_f64(g1.dx)[perm], tols.Tolerance(2 * bt.dx.bound[perm], two + bt.dx.explanation),
                "dx of the permuted batch"),
    ]
    if case.affine and g1.dgamma is not None and g2.dgamma is not None and g1.dbeta is not None and g2.dbeta is not None:
        cmps.append(compare(g2.dgamma, to_f64(g1.dgamma), tols.Tolerance(2 * bt.dgamma.bound, two + bt.dgamma.explanation),
                            "dgamma of the permuted batch", channel_axis=0))
        cmps.append(compare(g2.dbeta, to_f64(g1.dbeta), tols.Tolerance(2 * bt.dbeta.bound, two + bt.dbeta.explanation),
                            "dbeta of the permuted batch", channel_axis=0))
    if run1 is not None and run2 is not None:
        tm, tv = tols.running_permutation(x, case.dtype)
        text = "twice the error of the batch mean / two-pass variance (bnverify.tolerances.running_permutation)"
        cmps.append(compare(run2[0], run1[0], tols.Tolerance(tm, text), "running_mean after the permuted batch",
                            channel_axis=0))
        cmps.append(compare(run2[1], run1[1], tols.Tolerance(tv, text), "running_var after the permuted batch",
                            channel_axis=0))
    for c in cmps:
        check.observe(c.ratio, c.max_abs_err)
    bad = [c for c in cmps if not c.ok]
    if bad:
        if not cmps[0].ok:
            cmps[0].causes = diagnose.order_dependence(y1, y2, x, xp, gamma, beta, case.eps, ft, perm)
        raise CheckFailure("in training, permuting the batch must permute the output and change nothing else\n"
                           + "\n".join(c.report() for c in bad)
                           + f"\n  case: {case.describe()}; batch permuted at random")
