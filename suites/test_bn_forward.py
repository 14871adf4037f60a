"""Forward pass: training and eval outputs against the float64 oracle, precision, layouts, contract.

Each check draws a case, runs it through the target (``bnverify.instances``), evaluates the float64
oracle (``bnverify.reference.batchnorm``) on exactly the values the target received, and compares
them with the tolerance ``bnverify.tolerances`` derives for that computation; a failure names its
likely cause (``bnverify.diagnose``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bnverify import diagnose
from bnverify import tolerances as tols
from bnverify.adapter import NotSupported, TargetError
from bnverify.compare import CheckFailure, compare, to_f64
from bnverify.instances import build, require_dtype, require_rank
from bnverify.reference import batchnorm as oracle
from bnverify.strategies import (DTYPES, HALF, LARGE_BATCH, RANKS, Case, cases, make_input, ordinary_first,
                                 reported_failure, running_stats_for, tensor, to_dtype_values, upstream_grad)
from bnverify.strategies import dtype_id as _id

pytestmark = [pytest.mark.bnverify_suite("forward"), pytest.mark.bnverify_tier("quick")]


def _check_train_output(target: Any, case: Case, device: str, check: Any, *, x: torch.Tensor | None = None,
                        what: str = "training-mode output", layout: str = "") -> None:
    """Training-mode output of ``case`` (or of the tensor ``x`` holding its values) equals the oracle's."""
    inst, gamma, beta = build(target, case, device, momentum=case.momentum)
    running = inst.get_running()
    running64 = None if running is None else (to_f64(running[0]), to_f64(running[1]))
    out = inst.forward(tensor(case.x, case.dtype, device) if x is None else x, training=True)
    ref, _ = oracle.forward_train(case.x, gamma, beta, case.eps)
    tol = tols.forward_train(case.x, gamma, beta, case.eps, case.dtype)
    cmp = compare(out, ref, tol, what)
    check.observe(cmp.ratio, cmp.max_abs_err)
    if not cmp.ok:
        wide = None
        if cmp.nonfinite and case.dtype in (torch.float16, torch.bfloat16):  # is the NaN 16-bit's own?
            try:
                inst32, _, _ = build(target, replace(case, dtype=torch.float32), device, momentum=case.momentum)
                wide = to_f64(inst32.forward(tensor(case.x, torch.float32, device), training=True))
            except (TargetError, NotSupported):
                wide = None
        cmp.causes = diagnose.forward.train_output(to_f64(out), case.x, gamma, beta, case.eps, tol, case.dtype,
                                                   running64, wide)
        if x is not None and layout:  # a non-contiguous input: its storage read as if contiguous
            cmp.causes = diagnose.forward.layout_output(to_f64(out), x, gamma, beta, case.eps, tol, layout) + cmp.causes
        report = cmp.report() + f"\n  case: {case.describe()}"
        raise CheckFailure(reported_failure(case, report, lambda c: _failure_of(target, c, device)))


def _failure_of(target: Any, case: Case, device: str) -> str | None:
    """The report of ``case`` failing the training-output check (recording nothing), None when it passes."""
    try:
        _check_train_output(target, case, device, _Unrecorded())
    except AssertionError as exc:  # CheckFailure, or the target's own TargetError
        return str(exc)
    return None


class _Unrecorded:
    """A check recorder that records nothing: for the contiguous re-run that diagnoses a layout failure."""

    def observe(self, *a: Any, **k: Any) -> None:
        pass


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.parametrize("rank", RANKS, ids=lambda r: f"rank{r}")
@given(data=st.data())
def test_forward_train(bn_target, bn_device, bn_check, rank, dtype, data):
    """Training-mode output equals the oracle: drawn shapes, eps, affine gamma/beta, well-conditioned input."""
    require_rank(bn_target, rank, bn_device)
    case = data.draw(cases(rank, dtype), label="case")
    _check_train_output(bn_target, case, bn_device, bn_check)


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@given(data=st.data())
def test_forward_ill_conditioned(bn_target, bn_device, bn_check, dtype, data):
    """|mean|/std up to 1e4, variances near and below eps, constant channels: where one-pass variance breaks."""
    ranks = bn_target.supported_ranks(bn_device) or [2]
    rank = data.draw(st.sampled_from(ranks), label="rank")
    case = data.draw(cases(rank, dtype, conditionings=("large_mean", "tiny_var", "constant_channel")), label="case")
    _check_train_output(bn_target, case, bn_device, bn_check)


@pytest.mark.parametrize("dtype", HALF, ids=_id)
@pytest.mark.bnverify_examples(0.25)
@given(data=st.data())
def test_forward_half(bn_target, bn_device, bn_check, dtype, data):
    """16-bit input with >= 4096 values per channel of magnitude ~30: sums kept in 16 bits overflow."""
    rank = require_dtype(bn_target, dtype, bn_device)
    case = data.draw(cases(rank, dtype, conditionings=("half_overflow", "normal"), min_m=4096, max_numel=20000),
                     label="case")
    _check_train_output(bn_target, case, bn_device, bn_check)


@pytest.mark.parametrize("layout", ["channels_last", "transposed", "strided"])
@given(data=st.data())
def test_forward_layouts(bn_target, bn_device, bn_check, layout, data):
    """channels_last and non-contiguous views of the same values give the same output."""
    ranks = bn_target.supported_ranks(bn_device) or [2]
    if layout == "channels_last":
        ranks = [r for r in ranks if r in (4, 5)]
        if not ranks:
            pytest.skip("channels_last needs rank 4 or 5, which the target does not support")
    rank = data.draw(st.sampled_from(ranks), label="rank")
    case = data.draw(cases(rank, torch.float32), label="case")
    if layout == "transposed" and case.shape[0] == 1:
        return
    base = tensor(case.x, case.dtype, bn_device)
    if layout == "channels_last":
        fmt = torch.channels_last if base.dim() == 4 else torch.channels_last_3d
        x = base.contiguous(memory_format=fmt)
    elif layout == "transposed":
        x = base.transpose(0, -1).contiguous().transpose(0, -1)
    elif layout == "strided":
        big = torch.zeros((case.shape[0] * 2,) + case.shape[1:], dtype=case.dtype, device=bn_device)
        big[::2] = base
        x = big[::2]
    else:
        raise ValueError(layout)
    if x.is_contiguous():  # size-1 dimensions can make the view contiguous after all
        x = base.as_strided(base.shape, base.stride()).clone(memory_format=torch.preserve_format)
    try:
        _check_train_output(bn_target, case, bn_device, bn_check, x=x,
                            what=f"training-mode output for {layout} input", layout=layout)
    except CheckFailure as exc:
        try:
            _check_train_output(bn_target, case, bn_device, _Unrecorded(), x=base)
        except CheckFailure:
            raise exc from None
        raise CheckFailure(f"{exc}\n  {diagnose.forward.layout(layout)}") from None


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@given(data=st.data())
def test_forward_eval(bn_target, bn_device, bn_check, dtype, data):
    """Eval-mode output uses the running statistics: gamma (x - running_mean) / sqrt(running_var + eps) + beta."""
    ranks = bn_target.supported_ranks(bn_device) or [2]
    rank = data.draw(st.sampled_from(ranks), label="rank")
    case = data.draw(cases(rank, dtype, conditionings=("normal", "large_mean", "tiny_var")), label="case")
    ordinary_first(case, bn_check, lambda c, chk: _check_eval_output(bn_target, c, bn_device, chk))


def _check_eval_output(target: Any, case: Case, device: str, check: Any) -> None:
    inst, gamma, beta = build(target, case, device, momentum=case.momentum)
    rm, rv = running_stats_for(case, np.random.default_rng(case.seed + 1))
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
        cmp.causes = diagnose.forward.eval_output(to_f64(out), case.x, gamma, beta, rm64, rv64, case.eps, tol)
        raise CheckFailure(cmp.report() + f"\n  case: {case.describe()}")


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.bnverify_examples(0.25)
@given(data=st.data())
def test_forward_contract(bn_target, bn_device, bn_check, dtype, data):
    """Output shape, dtype and device equal the input's; no call modifies its input (small and large batches)."""
    ranks = bn_target.supported_ranks(bn_device) or [2]
    rank = data.draw(st.sampled_from(ranks), label="rank")
    case = data.draw(cases(rank, dtype), label="case")
    inst, _, _ = build(bn_target, case, bn_device, momentum=case.momentum)
    problems = []
    # a large batch too (>= LARGE_BATCH samples): code that reuses the input's memory often does so only
    # above a size threshold, and the other checks' batches stay small
    big_shape = (data.draw(st.integers(LARGE_BATCH, LARGE_BATCH + 64), label="large_N"),) + case.shape[1:]
    big = to_dtype_values(make_input(np.random.default_rng(case.seed + 5), big_shape, "normal", case.eps), case.dtype)
    runs = [(True, case.x, inst), (False, case.x, inst)]
    big_inst, _, _ = build(bn_target, case, bn_device, momentum=case.momentum)
    runs += [(True, big, big_inst), (False, big, big_inst)]
    for training, values, which in runs:
        x = tensor(values, case.dtype, bn_device)
        before = x.clone()
        # the caller's own tensor, autograd off (inference code, or training code under no_grad)
        out = which.forward(x, training=training, grad=False, autograd=False)
        mode = ("training" if training else "eval") + (f" (batch of {values.shape[0]})" if values is big else "")
        if out.dtype != x.dtype:
            problems.append(f"{mode}-mode output has dtype {out.dtype} for {x.dtype} input; batch norm keeps the input dtype")
        if out.device != x.device:
            problems.append(f"{mode}-mode output is on {out.device} for input on {x.device}")
        if not torch.equal(x, before):
            n = int((x != before).sum())
            problems.append(f"{mode}-mode forward modified its input in place ({n} of {x.numel()} values changed): "
                            "callers reuse their tensors; compute into a new tensor")
    x = tensor(case.x, case.dtype, bn_device)
    dy = tensor(upstream_grad(np.random.default_rng(case.seed), case.shape, case.dtype), case.dtype, bn_device)
    before = dy.clone()
    try:
        inst.forward(x, training=True, grad=True)
        grads = inst.backward(dy) if bn_target.has_backward else None
    except TargetError as exc:
        if not problems:
            raise
        problems.append(f"backward then failed: {exc}")
    else:
        if not torch.equal(dy, before):
            problems.append("backward modified the upstream gradient in place")
        promoted = getattr(inst, "promoted", None)
        if grads is not None and grads.dx.dtype != x.dtype:
            if promoted:  # numpy-cs231n: float64 gradients for float32 input are numpy's promotion, not a bug
                bn_check.detail("note", promoted)
                bn_check.detail("console", "note: " + promoted)
            else:
                problems.append(f"dx has dtype {grads.dx.dtype} for {x.dtype} input")
    bn_check.metric("problems", len(problems))  # a count, not an err/tol ratio
    if problems:
        raise CheckFailure("output contract broken:\n  " + "\n  ".join(problems) + f"\n  case: {case.describe()}")
