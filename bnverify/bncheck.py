"""The batch-norm checks, written once against ``BNInstance`` and called by the suite modules.

Each function runs one drawn case through the target and the float64
oracle, records the worst error/tolerance ratio on the check, and raises
``CheckFailure`` with a report (expected, got, where, by how much, the
tolerance and its derivation, the likely cause, the case) when the target is
wrong.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from bnverify import diagnose
from bnverify import tolerances as tols
from bnverify.adapter import BNConfig, BNInstance, BNTarget, NotSupported, TargetError
from bnverify.compare import CheckFailure, Comparison, compare, to_f64
from bnverify.reference import batchnorm as oracle
from bnverify.strategies import Case, tensor, to_dtype_values, upstream_grad


def require_rank(target: BNTarget, rank: int, device: str) -> None:
    """Skip (with the target's own message) when the target does not run at this rank."""
    why = target.probe_rank(rank, device)
    if why is not None:
        if not target.supported_ranks(device):
            return  # nothing works at all: let the check run and fail with the target's error
        pytest.skip(f"rank {rank} not supported by the target: {why}")


def require_dtype(target: BNTarget, dtype: torch.dtype, device: str) -> int:
    """A supported rank at which ``dtype`` runs; skips if the target rejects ``dtype``."""
    ranks = target.supported_ranks(device) or [2]
    rank = 4 if 4 in ranks else ranks[0]
    why = target.probe_dtype(dtype, rank, device)
    if why is not None:
        pytest.skip(f"{str(dtype).replace('torch.', '')} not supported by the target: {why}")
    return rank


def build(target: BNTarget, case: Case, device: str, *, momentum: float | None = None,
          track_running_stats: bool = True) -> tuple[BNInstance, np.ndarray | None, np.ndarray | None]:
    """An instance configured for ``case``; returns it with the gamma/beta it actually holds (float64)."""
    cfg = BNConfig(
        num_features=case.shape[1], rank=len(case.shape), eps=case.eps,
        momentum=case.momentum if momentum is None else momentum,
        affine=case.affine, track_running_stats=track_running_stats, dtype=case.dtype, device=device,
    )
    try:
        inst = target.instance(cfg)
    except NotSupported as exc:
        pytest.skip(str(exc))
    if case.affine:
        assert case.gamma is not None and case.beta is not None
        inst.set_params(tensor(case.gamma, case.dtype, device), tensor(case.beta, case.dtype, device))
    g, b = inst.get_params()
    if case.affine and (g is None or b is None):
        raise TargetError(f"{target.name} has no weight/bias with affine=True")
    gamma = None if g is None else to_f64(g)
    beta = None if b is None else to_f64(b)
    return inst, gamma, beta


def _fail(cmp: Comparison, case: Case, extra: str = "") -> None:
    raise CheckFailure(cmp.report() + f"\n  case: {case.describe()}" + (f"\n  {extra}" if extra else ""))


def forward_train(target: BNTarget, case: Case, device: str, check: Any, *, x_tensor: torch.Tensor | None = None,
                  what: str = "training-mode output") -> Comparison:
    inst, gamma, beta = build(target, case, device)
    x = tensor(case.x, case.dtype, device) if x_tensor is None else x_tensor
    running = inst.get_running()
    run64 = None if running is None else (to_f64(running[0]), to_f64(running[1]))
    out = inst.forward(x, training=True)
    ref, _ = oracle.forward_train(case.x, gamma, beta, case.eps)
    tol = tols.forward_train(case.x, gamma, beta, case.eps, case.dtype)
    cmp = compare(out, ref, tol, what)
    check.observe(cmp.ratio, cmp.max_abs_err)
    if not cmp.ok:
        cmp.causes = diagnose.forward_train(to_f64(out), case.x, gamma, beta, case.eps, tol, case.dtype, run64)
        _fail(cmp, case)
    return cmp


def running_stats_for(case: Case, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Plausible running statistics near (not at) the batch's own, in the case's dtype."""
    mean, var, _ = oracle.batch_stats(case.x)
    c = case.shape[1]
    rm = mean + rng.normal(0, 1, c) * np.sqrt(var + case.eps) + rng.uniform(-1, 1, c)
    rv = (var + case.eps) * np.exp(rng.uniform(np.log(0.25), np.log(4.0), c)) + rng.uniform(0, 1, c)
    return to_dtype_values(rm, case.dtype), to_dtype_values(rv, case.dtype)


def forward_eval(target: BNTarget, case: Case, device: str, check: Any) -> Comparison:
    inst, gamma, beta = build(target, case, device)
    rng = np.random.default_rng(case.seed + 1)
    rm, rv = running_stats_for(case, rng)
    inst.set_running(tensor(rm, case.dtype, device), tensor(rv, case.dtype, device))
    run = inst.get_running()
    assert run is not None
    rm64, rv64 = to_f64(run[0]), to_f64(run[1])
    out = inst.forward(tensor(case.x, case.dtype, device), training=False)
    ref = oracle.forward_eval(case.x, gamma, beta, rm64, rv64, case.eps)
    tol = tols.forward_eval(case.x, gamma, beta, rm64, rv64, case.eps, case.dtype)
    cmp = compare(out, ref, tol, "eval-mode output")
    check.observe(cmp.ratio, cmp.max_abs_err)
    if not cmp.ok:
        cmp.causes = diagnose.forward_eval(to_f64(out), case.x, gamma, beta, rm64, rv64, case.eps, tol)
        _fail(cmp, case)
    return cmp


def _grads_present(target: BNTarget, case: Case, grads: Any) -> None:
    if case.affine and (grads.dgamma is None or grads.dbeta is None):
        missing = " and ".join(n for n, g in (("weight", grads.dgamma), ("bias", grads.dbeta)) if g is None)
        raise TargetError(f"{target.name} produced no gradient for its {missing} (affine=True): "
                          "is the parameter used in forward, or detached?")


def _compare_grads(grads: Any, refs: tuple[np.ndarray, np.ndarray, np.ndarray], bt: Any, case: Case,
                   check: Any, prefix: str) -> list[Comparison]:
    """dx always, dgamma and dbeta when affine; each observed on the check."""
    dx, dg, db = refs
    cmps = [compare(grads.dx, dx, bt.dx, f"{prefix}dx (input gradient)")]
    if case.affine:
        cmps.append(compare(grads.dgamma, dg, bt.dgamma, f"{prefix}dgamma (weight gradient)", channel_axis=0))
        cmps.append(compare(grads.dbeta, db, bt.dbeta, f"{prefix}dbeta (bias gradient)", channel_axis=0))
    for c in cmps:
        check.observe(c.ratio, c.max_abs_err)
    return cmps


def backward_train(target: BNTarget, case: Case, device: str, check: Any) -> list[Comparison]:
    inst, gamma, beta = build(target, case, device)
    x = tensor(case.x, case.dtype, device)
    inst.forward(x, training=True, grad=True)
    dy = upstream_grad(np.random.default_rng(case.seed + 2), case.shape, case.dtype)
    grads = inst.backward(tensor(dy, case.dtype, device))
    _grads_present(target, case, grads)
    _, cache = oracle.forward_train(case.x, gamma, beta, case.eps)
    dx, dg, db = oracle.backward(dy, cache)
    bt = tols.backward_train(case.x, dy, gamma, case.eps, case.dtype, dx, dg, db)
    cmps = _compare_grads(grads, (dx, dg, db), bt, case, check, "")
    bad = [c for c in cmps if not c.ok]
    if bad:
        for c in bad:
            which = c.what.split()[0]  # "dx", "dgamma" or "dbeta"
            actual = to_f64({"dx": grads.dx, "dgamma": grads.dgamma, "dbeta": grads.dbeta}[which])
            tol = {"dx": bt.dx, "dgamma": bt.dgamma, "dbeta": bt.dbeta}[which]
            c.causes = diagnose.backward_train(which, actual, case.x, dy, gamma, case.eps, tol)
        raise CheckFailure("\n".join(c.report() for c in bad) + f"\n  case: {case.describe()}; upstream dy random (seed {case.seed + 2})")
    return cmps


def backward_eval(target: BNTarget, case: Case, device: str, check: Any) -> list[Comparison]:
    inst, gamma, beta = build(target, case, device)
    rm, rv = running_stats_for(case, np.random.default_rng(case.seed + 1))
    inst.set_running(tensor(rm, case.dtype, device), tensor(rv, case.dtype, device))
    run = inst.get_running()
    assert run is not None
    rm64, rv64 = to_f64(run[0]), to_f64(run[1])
    inst.forward(tensor(case.x, case.dtype, device), training=False, grad=True)
    dy = upstream_grad(np.random.default_rng(case.seed + 2), case.shape, case.dtype)
    grads = inst.backward(tensor(dy, case.dtype, device))
    _grads_present(target, case, grads)
    nd = case.x.ndim
    axes = oracle.reduction_axes(nd)
    sigma = np.sqrt(oracle.per_channel(rv64, nd) + case.eps)
    xhat = (case.x - oracle.per_channel(rm64, nd)) / sigma
    g = oracle.affine(case.x, gamma, None)[0]
    dx, dg, db = g / sigma * dy, (dy * xhat).sum(axis=axes), dy.sum(axis=axes)
    bt = tols.backward_eval(case.x, dy, gamma, rm64, rv64, case.eps, case.dtype, dx, dg, db)
    cmps = _compare_grads(grads, (dx, dg, db), bt, case, check, "eval-mode ")
    bad = [c for c in cmps if not c.ok]
    if bad:
        if not cmps[0].ok:
            cmps[0].causes = diagnose.backward_eval(to_f64(grads.dx), case.x, dy, gamma, case.eps, bt.dx)
        raise CheckFailure("\n".join(c.report() for c in bad) + f"\n  case: {case.describe()}; running statistics set by the check")
    return cmps


def contract(target: BNTarget, case: Case, device: str, check: Any) -> None:
    """Output shape, dtype and device equal the input's, and no call modifies its input."""
    inst, _, _ = build(target, case, device)
    problems = []
    for training in (True, False):
        x = tensor(case.x, case.dtype, device)
        before = x.clone()
        out = inst.forward(x, training=training, grad=False)
        mode = "training" if training else "eval"
        if out.dtype != x.dtype:
            problems.append(f"{mode}-mode output has dtype {out.dtype} for {x.dtype} input; batch norm keeps the input dtype")
        if out.device != x.device:
            problems.append(f"{mode}-mode output is on {out.device} for input on {x.device}")
        if not torch.equal(x, before):
            n = int((x != before).sum())
            problems.append(f"{mode}-mode forward modified its input in place ({n} of {x.numel()} values changed): "
                            "callers reuse their tensors; compute into a new tensor")
    x = tensor(case.x, case.dtype, device)
    dy = tensor(upstream_grad(np.random.default_rng(case.seed), case.shape, case.dtype), case.dtype, device)
    before = dy.clone()
    try:
        inst.forward(x, training=True, grad=True)
        grads = inst.backward(dy)
    except TargetError as exc:
        if not problems:
            raise
        problems.append(f"backward then failed: {exc}")
    else:
        if not torch.equal(dy, before):
            problems.append("backward modified the upstream gradient in place")
        if grads.dx.dtype != x.dtype:
            problems.append(f"dx has dtype {grads.dx.dtype} for {x.dtype} input")
    check.observe(float(len(problems)))
    if problems:
        raise CheckFailure("output contract broken:\n  " + "\n  ".join(problems) + f"\n  case: {case.describe()}")


def layouts(target: BNTarget, case: Case, device: str, check: Any, layout: str) -> None:
    """The same values in a channels_last or non-contiguous tensor give the same output."""
    base = tensor(case.x, case.dtype, device)
    if layout == "channels_last":
        fmt = torch.channels_last if base.dim() == 4 else torch.channels_last_3d
        x = base.contiguous(memory_format=fmt)
    elif layout == "transposed":
        x = base.transpose(0, -1).contiguous().transpose(0, -1)
    elif layout == "strided":
        big = torch.zeros((case.shape[0] * 2,) + case.shape[1:], dtype=case.dtype, device=device)
        big[::2] = base
        x = big[::2]
    else:
        raise ValueError(layout)
    if x.is_contiguous():  # size-1 dimensions can make the view contiguous after all
        x = base.as_strided(base.shape, base.stride()).clone(memory_format=torch.preserve_format)
    try:
        forward_train(target, case, device, check, x_tensor=x, what=f"training-mode output for {layout} input")
    except CheckFailure as exc:
        try:
            forward_train(target, case, device, _Null(), x_tensor=base)
        except CheckFailure:
            raise exc from None
        raise CheckFailure(f"{exc}\n  likely cause: the same values in a contiguous tensor pass, so the implementation "
                           f"ignores strides (reads storage as if contiguous) for {layout} input") from None


class _Null:
    def observe(self, *a: Any, **k: Any) -> None:
        pass


def gradcheck(target: BNTarget, case: Case, device: str, check: Any) -> None:
    """The target's backward agrees with finite differences of its own forward, in float64."""
    inst, _, _ = build(target, case, device)
    if not inst.differentiable:
        _numerical_gradcheck(inst, case, device, check)
        return
    spec = inst.gradcheck_fn()
    if spec is None:
        pytest.skip("the module's parameters cannot be substituted for torch.func.functional_call")
    fn, params = spec
    x = tensor(case.x, torch.float64, device).requires_grad_(True)
    inputs = (x,) + tuple(p.detach().clone().requires_grad_(True) for p in params)
    try:
        ok = inst.call("gradcheck", lambda: torch.autograd.gradcheck(
            fn, inputs, eps=tols.GRADCHECK["eps"], atol=tols.GRADCHECK["atol"], rtol=tols.GRADCHECK["rtol"],
            fast_mode=True, raise_exception=True))
    except TargetError as exc:
        text = str(exc)
        if "GradcheckError" in text or "Jacobian mismatch" in text:
            which = "x" if "input 0" in text else "gamma" if "input 1" in text else "beta" if "input 2" in text else "an input"
            raise CheckFailure(
                f"the backward pass is inconsistent with the forward pass: the analytical gradient w.r.t. {which} "
                f"differs from float64 central finite differences of the target's own forward (torch.autograd.gradcheck, "
                f"eps={tols.GRADCHECK['eps']:g}, atol={tols.GRADCHECK['atol']:g}, rtol={tols.GRADCHECK['rtol']:g})\n"
                f"  {text.splitlines()[0]}\n  case: {case.describe()}") from None
        raise
    check.observe(0.0 if ok else float("inf"))


def _numerical_gradcheck(inst: BNInstance, case: Case, device: str, check: Any) -> None:
    """For non-autograd targets: directional derivative of <f(x), dy> vs the target's dx, in float64."""
    x = case.x
    dy = upstream_grad(np.random.default_rng(case.seed + 3), case.shape, torch.float64)
    inst.forward(tensor(x, torch.float64, device), training=True, grad=True)
    dx = to_f64(inst.backward(tensor(dy, torch.float64, device)).dx)
    h = 1e-5
    rng = np.random.default_rng(case.seed + 4)
    worst = 0.0
    for _ in range(4):
        v = rng.standard_normal(x.shape)
        fp = to_f64(inst.forward(tensor(x + h * v, torch.float64, device), training=True))
        fm = to_f64(inst.forward(tensor(x - h * v, torch.float64, device), training=True))
        numeric = float(((fp - fm) / (2 * h) * dy).sum())
        analytic = float((dx * v).sum())
        scale = float(np.abs(dx).sum() * np.abs(v).max()) + 1e-12
        err = abs(numeric - analytic) / (tols.GRADCHECK["rtol"] * scale + tols.GRADCHECK["atol"])
        worst = max(worst, err)
        if err > 1:
            check.observe(err)
            raise CheckFailure(
                "the backward pass is inconsistent with the forward pass: the directional derivative of "
                f"<forward(x), dy> along a random direction is {numeric:.9g} by central differences (h={h:g}) "
                f"but {analytic:.9g} from batchnorm_backward's dx ({err:.3g} x tolerance)\n  case: {case.describe()}")
    check.observe(worst)


def training_setup(target: BNTarget, device: str, config: Any, split: Any) -> tuple[Any, Any]:
    """``(layer factory, protocol)`` for the suites that train the target inside a network.

    Skips when CUDA is asked for but missing, or when the target cannot be used as a layer.
    """
    from bnverify import convergence as cv
    from bnverify.adapter import layer_factory

    if device.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("CUDA is not available on this machine")
    try:
        factory = layer_factory(target, device=device)
    except NotSupported as exc:
        pytest.skip(f"the target cannot be used as a layer here: {exc}")
    protocol = cv.Protocol.for_suite(
        split, config.getoption("bn_convergence_epochs"), config.getoption("bn_convergence_seeds")
    )
    return factory, protocol

