"""Backward pass: dx, dgamma, dbeta against the float64 oracle with random upstream gradients.

Each check draws a case and a random upstream gradient (never ``sum()``, whose dx is identically 0),
runs the target's backward, evaluates the oracle's gradients on exactly the values the target
received, and compares them with the bounds ``bnverify.tolerances`` derives; a failure names its
likely cause (``bnverify.diagnose``).  ``test_gradcheck`` holds the backward to finite differences of
the target's own forward instead.

Every check reports its failure through ``bnverify.strategies.ordinary_first``: an ill-conditioned
final example is run again on ordinary inputs of the same shape, dtype and eps, and the first ordinary
failure is reported instead.  ``test_backward_ill_conditioned`` draws only ill-conditioned input, as
its purpose, and is treated the same way: a bug that fails there and on ordinary input too is not a
conditioning bug, so its ordinary example is reported ("fails at ordinary conditioning too"; the
ill-conditioned example it was found on is named); when ordinary input passes, the report keeps the
ill-conditioned example and says "ill-conditioning is the trigger", which is what this check exists
to find (a one-pass ``E[x^2] - E[x]^2`` recomputation in the backward, say).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bnverify import diagnose
from bnverify import tolerances as tols
from bnverify.adapter import TargetError
from bnverify.compare import CheckFailure, Comparison, compare, to_f64
from bnverify.instances import build, require_backward, require_dtype, require_rank
from bnverify.reference import batchnorm as oracle
from bnverify.strategies import (DTYPES, HALF, RANKS, Case, cases, ordinary_first, running_stats_for, tensor,
                                 upstream_grad)
from bnverify.strategies import dtype_id as _id

pytestmark = [pytest.mark.bnverify_suite("backward"), pytest.mark.bnverify_tier("quick")]


def _require_grads(target: Any, case: Case, grads: Any) -> None:
    """With affine=True the target must return dgamma and dbeta."""
    if case.affine and (grads.dgamma is None or grads.dbeta is None):
        missing = " and ".join(n for n, g in (("weight", grads.dgamma), ("bias", grads.dbeta)) if g is None)
        raise TargetError(f"{target.name} produced no gradient for its {missing} (affine=True): "
                          "is the parameter used in forward, or detached?")


def _compare_grads(grads: Any, refs: tuple[np.ndarray, np.ndarray, np.ndarray], tol: tols.BackwardTolerance,
                   case: Case, check: Any, prefix: str) -> list[Comparison]:
    """dx always, dgamma and dbeta when affine; each observed on the check."""
    dx, dg, db = refs
    cmps = [compare(grads.dx, dx, tol.dx, f"{prefix}dx (input gradient)")]
    if case.affine:
        cmps.append(compare(grads.dgamma, dg, tol.dgamma, f"{prefix}dgamma (weight gradient)", channel_axis=0))
        cmps.append(compare(grads.dbeta, db, tol.dbeta, f"{prefix}dbeta (bias gradient)", channel_axis=0))
    for c in cmps:
        check.observe(c.ratio, c.max_abs_err)
    return cmps


def _check_train_grads(target: Any, case: Case, device: str, check: Any) -> None:
    """Training-mode dx, dgamma, dbeta of ``case`` for a random upstream gradient equal the oracle's."""
    require_backward(target)
    inst, gamma, beta = build(target, case, device, momentum=case.momentum)
    inst.forward(tensor(case.x, case.dtype, device), training=True, grad=True)
    dy = upstream_grad(np.random.default_rng(case.seed + 2), case.shape, case.dtype)
    grads = inst.backward(tensor(dy, case.dtype, device))
    _require_grads(target, case, grads)
    _, cache = oracle.forward_train(case.x, gamma, beta, case.eps)
    dx, dg, db = oracle.backward(dy, cache)
    tol = tols.backward_train(case.x, dy, gamma, case.eps, case.dtype, dx, dg, db)
    cmps = _compare_grads(grads, (dx, dg, db), tol, case, check, "")
    bad = [c for c in cmps if not c.ok]
    if bad:
        for c in bad:
            which = c.what.split()[0]  # "dx", "dgamma" or "dbeta"
            actual = to_f64({"dx": grads.dx, "dgamma": grads.dgamma, "dbeta": grads.dbeta}[which])
            c.causes = diagnose.backward.train_grads(which, actual, case.x, dy, gamma, case.eps, getattr(tol, which))
        raise CheckFailure("\n".join(c.report() for c in bad)
                           + f"\n  case: {case.describe()}; upstream dy random (seed {case.seed + 2})")


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.parametrize("rank", RANKS, ids=lambda r: f"rank{r}")
@given(data=st.data())
def test_backward_train(bn_target, bn_device, bn_check, rank, dtype, data):
    """Training-mode dx, dgamma, dbeta equal the oracle for a random upstream gradient."""
    require_rank(bn_target, rank, bn_device)
    case = data.draw(cases(rank, dtype), label="case")
    ordinary_first(case, bn_check, lambda c, chk: _check_train_grads(bn_target, c, bn_device, chk))


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@given(data=st.data())
def test_backward_ill_conditioned(bn_target, bn_device, bn_check, dtype, data):
    """Gradients with |mean|/std up to 1e4, variances near eps and constant channels (a failure that ordinary
    input shows too is reported on ordinary input; see the module docstring)."""
    ranks = bn_target.supported_ranks(bn_device) or [2]
    rank = data.draw(st.sampled_from(ranks), label="rank")
    case = data.draw(cases(rank, dtype, conditionings=("large_mean", "tiny_var", "constant_channel")), label="case")
    ordinary_first(case, bn_check, lambda c, chk: _check_train_grads(bn_target, c, bn_device, chk))


@pytest.mark.parametrize("dtype", HALF, ids=_id)
@pytest.mark.bnverify_examples(0.25)
@given(data=st.data())
def test_backward_half(bn_target, bn_device, bn_check, dtype, data):
    """16-bit gradients over >= 4096 values per channel (float32 accumulation expected)."""
    rank = require_dtype(bn_target, dtype, bn_device)
    case = data.draw(cases(rank, dtype, conditionings=("half_overflow", "normal"), min_m=4096, max_numel=20000),
                     label="case")
    ordinary_first(case, bn_check, lambda c, chk: _check_train_grads(bn_target, c, bn_device, chk))


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@given(data=st.data())
def test_backward_eval(bn_target, bn_device, bn_check, dtype, data):
    """Eval-mode gradients treat the running statistics as constants: dx = gamma / sqrt(running_var + eps) * dy."""
    ranks = bn_target.supported_ranks(bn_device) or [2]
    rank = data.draw(st.sampled_from(ranks), label="rank")
    require_backward(bn_target, eval_mode=True, rank=rank)
    if bn_target.probe_mode_source(bn_device) == "grad":
        pytest.skip(diagnose.modes.GRAD_MODE_DESIGN)
    case = data.draw(cases(rank, dtype), label="case")
    ordinary_first(case, bn_check, lambda c, chk: _check_eval_grads(bn_target, c, bn_device, chk))


def _check_eval_grads(target: Any, case: Case, device: str, check: Any) -> None:
    """Eval-mode dx, dgamma, dbeta of ``case``, with running statistics near its batch's, equal the oracle's."""
    inst, gamma, beta = build(target, case, device, momentum=case.momentum)
    rm, rv = running_stats_for(case, np.random.default_rng(case.seed + 1))
    inst.set_running(tensor(rm, case.dtype, device), tensor(rv, case.dtype, device))
    run = inst.get_running()
    assert run is not None
    rm64, rv64 = to_f64(run[0]), to_f64(run[1])
    inst.forward(tensor(case.x, case.dtype, device), training=False, grad=True)
    dy = upstream_grad(np.random.default_rng(case.seed + 2), case.shape, case.dtype)
    grads = inst.backward(tensor(dy, case.dtype, device))
    _require_grads(target, case, grads)
    # the oracle: in eval the running statistics are constants, so y is affine in x
    nd = case.x.ndim
    axes = oracle.reduction_axes(nd)
    sigma = np.sqrt(oracle.per_channel(rv64, nd) + case.eps)
    xhat = (case.x - oracle.per_channel(rm64, nd)) / sigma
    g = oracle.affine(case.x, gamma, None)[0]
    dx, dg, db = g / sigma * dy, (dy * xhat).sum(axis=axes), dy.sum(axis=axes)
    tol = tols.backward_eval(case.x, dy, gamma, rm64, rv64, case.eps, case.dtype, dx, dg, db)
    cmps = _compare_grads(grads, (dx, dg, db), tol, case, check, "eval-mode ")
    bad = [c for c in cmps if not c.ok]
    if bad:
        if not cmps[0].ok:
            cmps[0].causes = diagnose.backward.eval_dx(to_f64(grads.dx), case.x, dy, gamma, case.eps, tol.dx)
        raise CheckFailure("\n".join(c.report() for c in bad)
                           + f"\n  case: {case.describe()}; running statistics set by the check")


@pytest.mark.bnverify_examples(0.25)
@given(data=st.data())
def test_gradcheck(bn_target, bn_device, bn_check, data):
    """The backward agrees with float64 finite differences of the target's own forward."""
    require_backward(bn_target)
    ranks = bn_target.supported_ranks(bn_device) or [2]
    rank = data.draw(st.sampled_from(ranks), label="rank")
    require_dtype(bn_target, torch.float64, bn_device)
    case = data.draw(cases(rank, torch.float64, max_numel=64), label="case")
    ordinary_first(case, bn_check, lambda c, chk: _check_gradcheck(bn_target, c, bn_device, chk))


def _check_gradcheck(target: Any, case: Case, device: str, check: Any) -> None:
    """The backward of ``case`` (float64) agrees with central finite differences of the target's own forward."""
    inst, _, _ = build(target, case, device, momentum=case.momentum)
    if not inst.differentiable:
        # no autograd (numpy-cs231n): the directional derivative of <forward(x), dy> vs the target's dx
        dy = upstream_grad(np.random.default_rng(case.seed + 3), case.shape, torch.float64)
        inst.forward(tensor(case.x, torch.float64, device), training=True, grad=True)
        dx = to_f64(inst.backward(tensor(dy, torch.float64, device)).dx)
        h = tols.DIRECTIONAL_FD_STEP
        rng = np.random.default_rng(case.seed + 4)
        worst = 0.0
        for _ in range(4):
            v = rng.standard_normal(case.x.shape)
            fp = to_f64(inst.forward(tensor(case.x + h * v, torch.float64, device), training=True))
            fm = to_f64(inst.forward(tensor(case.x - h * v, torch.float64, device), training=True))
            numeric = float(((fp - fm) / (2 * h) * dy).sum())
            analytic = float((dx * v).sum())
            err = abs(numeric - analytic) / tols.directional_gradcheck(dx, v)
            worst = max(worst, err)
            if err > 1:
                check.observe(err)
                raise CheckFailure(
                    "the backward pass is inconsistent with the forward pass: the directional derivative of "
                    f"<forward(x), dy> along a random direction is {numeric:.9g} by central differences (h={h:g}) "
                    f"but {analytic:.9g} from batchnorm_backward's dx ({err:.3g} x tolerance)\n  case: {case.describe()}")
        check.observe(worst)
        return
    spec = inst.gradcheck_fn()
    if spec is None:
        pytest.skip("the module's parameters cannot be substituted for torch.func.functional_call")
    fn, params = spec
    x = tensor(case.x, torch.float64, device).requires_grad_(True)
    inputs = (x,) + tuple(p.detach().clone().requires_grad_(True) for p in params)
    gc = tols.GRADCHECK
    try:
        ok = inst.call("gradcheck", lambda: torch.autograd.gradcheck(
            fn, inputs, eps=gc["eps"], atol=gc["atol"], rtol=gc["rtol"], fast_mode=True, raise_exception=True))
    except TargetError as exc:
        text = str(exc)
        if "GradcheckError" in text or "Jacobian mismatch" in text:
            which = "x" if "input 0" in text else "gamma" if "input 1" in text else "beta" if "input 2" in text else "an input"
            raise CheckFailure(
                f"the backward pass is inconsistent with the forward pass: the analytical gradient w.r.t. {which} "
                f"differs from float64 central finite differences of the target's own forward (torch.autograd.gradcheck, "
                f"eps={gc['eps']:g}, atol={gc['atol']:g}, rtol={gc['rtol']:g})\n"
                f"  {text.splitlines()[0]}\n  case: {case.describe()}") from None
        raise
    check.metric("gradcheck_passed", float(ok))  # a yes/no, not an err/tol ratio
