"""Train/eval modes, running statistics and framework conventions (seeds 000, 002, 004; SPEC section 4).

The bugs that only show at inference: running statistics with the wrong
estimator or momentum, eval that still uses batch statistics, statistics
that drift in eval, population statistics computed wrong.  Every check runs
under the target's convention (``--convention``); a failure that another
convention explains names it.

Each check drives the target through a short life (construct, a few training
steps, eval, toggles, a state_dict round trip), simulates the same life with
the float64 oracle (``reference.batchnorm.update_running`` with the target's
declared convention), and compares with the bounds of ``bnverify.tolerances``;
a failure says which known mistake or other convention the numbers match
(``bnverify.diagnose``).

The seeds define the behaviour: running statistics are exponentially
weighted averages of the batch statistics (seed 004); ``momentum=None`` is
the cumulative average, i.e. seed 000's population statistics
``E[x] = E_B[mu_B]``, ``Var[x] = m/(m-1) E_B[sigma_B^2]``; inference uses
them, per sample, and is the folded affine map
``y = gamma/sqrt(Var+eps) x + (beta - gamma E[x]/sqrt(Var+eps))`` (seed 000).

A check that fails on a drawn case reports it through ``bnverify.strategies.ordinary_first``: when the
final example is ill-conditioned (|mean|/std above ``tolerances.ILL_CONDITIONED_MEAN_OVER_STD`` in any
batch the check trains or evaluates on: the case's own and the ``batches`` derived from its seed, which
are ordinary for an ordinary case), the check runs again on ordinary cases of the same shape, dtype and
eps and reports the first that fails, or names ill-conditioning as the trigger.  Not so:
``test_eps_honoured`` and ``test_bn_param_defaults``, whose batches with variances near eps are
ill-conditioned on purpose (eps shows only there), and the checks whose verdict does not depend on the
input's values (defaults, mode source, one value per channel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bnverify import diagnose
from bnverify import tolerances as tols
from bnverify.adapter import BNConfig, BNInstance, TargetError, TorchModuleInstance
from bnverify.compare import CheckFailure, Comparison, compare, matches, to_f64
from bnverify.conventions import Convention
from bnverify.fingerprint import probe_defaults
from bnverify.instances import build, config, instance, load_params, running64
from bnverify.reference import batchnorm as oracle
from bnverify.strategies import (Case, Inputs, batches, cases, derived_conditioning, make_input, ordinary_first,
                                 tensor, to_dtype_values)

pytestmark = [pytest.mark.bnverify_suite("modes"), pytest.mark.bnverify_tier("quick")]

DTYPES = [torch.float64, torch.float32]

STEPS = 3  # training steps per life: enough to separate momentum conventions and to compound errors


def _id(d: torch.dtype) -> str:
    return str(d).replace("torch.", "")


def _case(target, device, data, dtype=torch.float32, *, max_numel=600, min_m=2, affine=None):
    ranks = target.supported_ranks(device) or [2]
    rank = data.draw(st.sampled_from(ranks), label="rank")
    return data.draw(cases(rank, dtype, max_numel=max_numel, min_m=min_m, affine=affine), label="case")


# --------------------------------------------------------------------------- helpers shared by several checks

def _batches(n: int) -> Inputs:
    """The inputs of a check that trains on ``n`` of a case's ``batches`` (for ``ordinary_first``)."""
    return lambda case: batches(case, n)


def _train_some(inst: BNInstance, case: Case, device: str, steps: int = STEPS) -> None:
    for x in batches(case, steps):
        inst.forward(tensor(x, case.dtype, device), training=True)


def _count(inst: BNInstance) -> int | None:
    """``num_batches_tracked`` of a torch module, or None."""
    if isinstance(inst, TorchModuleInstance):
        t = getattr(inst.module, "num_batches_tracked", None)
        if isinstance(t, torch.Tensor) and t.numel() == 1:
            return int(t.item())
    return None


def _channel_cmp(actual: np.ndarray, expected: np.ndarray, bound: np.ndarray, what: str,
                 explanation: str) -> Comparison:
    """A per-channel comparison (running statistics) against a bound from ``bnverify.tolerances``."""
    return compare(actual, expected, tols.Tolerance(bound, explanation), what, channel_axis=0)


def _eval_compare(inst: BNInstance, x: np.ndarray, case: Case, device: str, gamma: np.ndarray | None,
                  beta: np.ndarray | None, what: str) -> tuple[Comparison, np.ndarray]:
    """Eval output of ``x`` against the oracle with the running statistics the instance holds."""
    rm, rv = running64(inst, "before eval")
    out = inst.forward(tensor(x, case.dtype, device), training=False)
    ref = oracle.forward_eval(x, gamma, beta, rm, rv, case.eps)
    tol = tols.forward_eval(x, gamma, beta, rm, rv, case.eps, case.dtype)
    cmp = compare(out, ref, tol, what)
    if not cmp.ok:
        cmp.causes = diagnose.forward.eval_output(to_f64(out), x, gamma, beta, rm, rv, case.eps, tol)
    return cmp, to_f64(out)


# --------------------------------------------------------------------------- running statistics

@dataclass
class _Life:
    """The oracle's running statistics after each step, and their error bounds."""

    means: list[np.ndarray]
    vars: list[np.ndarray]
    mean_bounds: list[np.ndarray]
    var_bounds: list[np.ndarray]


def _simulate(xs: list[np.ndarray], rm0: np.ndarray, rv0: np.ndarray, *, momentum: float | None,
              conv: Convention, dtype: torch.dtype) -> _Life:
    """Run ``update_running`` over ``xs`` in ``conv`` and carry ``tolerances.running_update`` bounds along."""
    rm, rv, n = np.asarray(rm0, np.float64), np.asarray(rv0, np.float64), 0
    bm, bv = np.zeros_like(rm), np.zeros_like(rv)
    life = _Life([], [], [], [])
    for x in xs:
        w = (1.0 / (n + 1)) if momentum is None else conv.to_update_fraction(float(momentum))
        bm, bv = tols.running_update(x, rm, rv, w, conv.unbiased_running_var, dtype, bm, bv)
        rm, rv, n = oracle.update_running(rm, rv, x, momentum=momentum, momentum_kind=conv.momentum_kind,
                                          unbiased=conv.unbiased_running_var, num_batches_tracked=n)
        life.means.append(rm)
        life.vars.append(rv)
        life.mean_bounds.append(bm)
        life.var_bounds.append(bv)
    return life


def _momentum_label(conv: Convention, momentum: float | None) -> str:
    if momentum is None:
        return "momentum=None (cumulative average)"
    w = conv.to_update_fraction(momentum)
    return f"momentum={momentum:.4g} (new batch weight {w:.4g} under the {conv.name} convention)"


def _check_running_stats(target: Any, case: Case, device: str, check: Any, *, momentum: float | None,
                         steps: int = STEPS) -> None:
    """Running mean/variance after each of ``steps`` training steps equal the oracle's, in the convention."""
    conv = target.convention
    inst, _, _ = build(target, case, device, momentum=momentum)
    xs = batches(case, steps)
    rm0, rv0 = running64(inst, "after construction")
    means, vars_ = [], []
    for x in xs:
        inst.forward(tensor(x, case.dtype, device), training=True)
        rm, rv = running64(inst, "after a training step")
        means.append(rm)
        vars_.append(rv)
    ref = _simulate(xs, rm0, rv0, momentum=momentum, conv=conv, dtype=case.dtype)
    expl = (f"{conv.describe()}; bound for {steps} steps of a two-pass update in {str(case.dtype).replace('torch.', '')} "
            f"(derivation: bnverify.tolerances.running_update)")
    cmps = []
    for i in range(steps):
        cmps.append(_channel_cmp(means[i], ref.means[i], ref.mean_bounds[i],
                                 f"running_mean after training step {i + 1} of {steps}", expl))
        cmps.append(_channel_cmp(vars_[i], ref.vars[i], ref.var_bounds[i],
                                 f"running_var after training step {i + 1} of {steps}", expl))
    worst = max(cmps, key=lambda c: c.ratio)
    check.observe(worst.ratio, worst.max_abs_err)
    if worst.ok:
        return
    first_bad = next(c for c in cmps if not c.ok)
    first_bad.causes = diagnose.modes.running_statistics(conv, xs, rm0, rv0, momentum, means, vars_,
                                                         ref.mean_bounds, ref.var_bounds, eps=case.eps)
    raise CheckFailure(first_bad.report() + f"\n  {_momentum_label(conv, momentum)}; running statistics started at "
                       f"mean {rm0.round(4).tolist()[:4]}, var {rv0.round(4).tolist()[:4]}"
                       + f"\n  case: {case.describe()}")


@pytest.mark.parametrize("which", ["zero", "one", "drawn", "default"])
@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.bnverify_examples(0.34)
@given(data=st.data())
def test_running_stats(bn_target, bn_device, bn_check, dtype, which, data):
    """Running mean/var after 3 training steps equal the oracle's for momentum 0, 1, a drawn value and the default."""
    case = _case(bn_target, bn_device, data, dtype)
    momentum = {"zero": 0.0, "one": 1.0, "drawn": case.momentum,
                "default": bn_target.convention.default_momentum}[which]
    ordinary_first(case, bn_check, lambda c, chk: _check_running_stats(bn_target, c, bn_device, chk, momentum=momentum),
                   inputs=_batches(STEPS))


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.bnverify_examples(0.34)
@given(data=st.data())
def test_momentum_none(bn_target, bn_device, bn_check, dtype, data):
    """momentum=None: the cumulative average, seed 000's E[x] = E_B[mu_B], Var[x] = m/(m-1) E_B[sigma_B^2]."""
    if not bn_target.convention.supports_momentum_none:
        pytest.skip(f"momentum=None has no meaning under the {bn_target.convention.name} convention (SPEC section 4)")
    case = _case(bn_target, bn_device, data, dtype)
    ordinary_first(case, bn_check, lambda c, chk: _check_running_stats(bn_target, c, bn_device, chk, momentum=None,
                                                                       steps=4), inputs=_batches(4))


@pytest.mark.bnverify_examples(0.2)
@given(data=st.data())
def test_num_batches_tracked(bn_target, bn_device, bn_check, data):
    """num_batches_tracked: int64 0 at construction, +1 per training forward, unchanged by eval."""
    case = _case(bn_target, bn_device, data)
    ordinary_first(case, bn_check, lambda c, chk: _check_num_batches_tracked(bn_target, c, bn_device, chk))


def _check_num_batches_tracked(target: Any, case: Case, device: str, check: Any) -> None:
    """``num_batches_tracked`` over train and eval calls on ``case``'s batch."""
    inst = instance(target, config(case, device, momentum=target.convention.default_momentum))
    if not isinstance(inst, TorchModuleInstance):
        pytest.skip(f"kind {target.kind} keeps no num_batches_tracked (the harness or bn_param holds the state)")
    module = inst.module

    def count(when: str) -> int:
        t = getattr(module, "num_batches_tracked", None)
        if not isinstance(t, torch.Tensor):
            raise CheckFailure(f"num_batches_tracked {when} is {type(t).__name__}; expected an int64 tensor buffer "
                               "(torch.nn.BatchNorm2d registers it, and state_dict/momentum=None rely on it)")
        if t.dtype != torch.long or t.numel() != 1:
            raise CheckFailure(f"num_batches_tracked {when} has dtype {t.dtype} and {t.numel()} elements; "
                               "expected a one-element int64 tensor")
        return int(t.item())

    problems = []
    expected = 0
    got = count("after construction")
    counts = [got]
    if got != 0:
        problems.append(f"after construction: expected 0, got {got}")
    x = tensor(case.x, case.dtype, device)
    modes = [True, True, False, True, False, False]
    for step, training in enumerate(modes):
        inst.forward(x, training=training)
        expected += 1 if training else 0
        got = count(f"after call {step + 1}")
        counts.append(got)
        if got != expected:
            mode = "training" if training else "eval"
            problems.append(f"after call {step + 1} ({mode}): expected {expected}, got {got}")
    check.metric("problems", len(problems))  # a count, not an err/tol ratio
    if problems:
        raise CheckFailure("num_batches_tracked is wrong:\n  " + "\n  ".join(problems[:4])
                           + diagnose.common.cause_lines(diagnose.modes.counter(counts, modes))
                           + f"\n  case: {case.describe()}")


@pytest.mark.bnverify_examples(0.2)
@given(data=st.data())
def test_fresh_defaults(bn_target, bn_device, bn_check, data):
    """A fresh instance holds gamma 1, beta 0, running mean 0, running variance 1."""
    case = _case(bn_target, bn_device, data)
    inst = instance(bn_target, config(case, bn_device, momentum=bn_target.convention.default_momentum, affine=True))
    g, b = inst.get_params()
    run = inst.get_running()
    c = case.shape[1]
    problems = []
    for name, t, want in (("weight (gamma)", g, 1.0), ("bias (beta)", b, 0.0)):
        if t is None:
            problems.append(f"{name} is missing with affine=True")
        elif not np.array_equal(to_f64(t), np.full(c, want)):
            problems.append(f"{name}: expected all {want:g}, got {to_f64(t)[:6].tolist()}")
    if run is None:
        problems.append("running_mean/running_var are missing with track_running_stats=True")
    else:
        for name, t, want in (("running_mean", run[0], 0.0), ("running_var", run[1], 1.0)):
            if not np.array_equal(to_f64(t), np.full(c, want)):
                problems.append(f"{name}: expected all {want:g}, got {to_f64(t)[:6].tolist()}")
    bn_check.metric("problems", len(problems))  # a count, not an err/tol ratio
    if problems:
        raise CheckFailure("a freshly constructed batch norm must start as the identity in eval "
                           "(gamma 1, beta 0, running mean 0, running variance 1):\n  " + "\n  ".join(problems)
                           + diagnose.common.cause_lines(diagnose.modes.fresh_defaults(
                               None if g is None else to_f64(g), None if b is None else to_f64(b),
                               None if run is None else to_f64(run[0]), None if run is None else to_f64(run[1]))))


def test_constructor_defaults(bn_target, bn_device, bn_check):
    """cls(num_features) gets the convention's default eps and momentum, measured by probing."""
    if bn_target.kind != "torch-module":
        pytest.skip(f"kind {bn_target.kind}: the harness passes eps and momentum on every call, so there is no "
                    "constructor default to measure")
    conv = bn_target.convention
    d = probe_defaults(bn_target, bn_device)
    problems, causes = [], []
    w_exp = conv.to_update_fraction(conv.default_momentum)
    ratios = []  # |measured - default| / its tolerance, for what could be measured
    if d.eps is None or not math.isfinite(d.eps):
        problems.append(f"default eps not measurable: {d.eps_note or d.note or 'the probe gave no finite value'}")
    else:
        r_eps = abs(d.eps - conv.default_eps) / (tols.DEFAULT_EPS_RTOL * conv.default_eps)
        ratios.append(r_eps)
        if r_eps > 1:
            problems.append(f"default eps: expected {conv.default_eps:g} ({conv.name}), measured {d.eps:.4g}")
            causes.append(diagnose.modes.default_eps(d.eps, conv))
    if d.weight_new is None or not math.isfinite(d.weight_new):
        problems.append(f"default momentum not measurable: {d.note or 'the probe gave no finite value'}")
    else:
        r_m = abs(d.weight_new - w_exp) / tols.DEFAULT_MOMENTUM_ATOL
        ratios.append(r_m)
        if r_m > 1:
            problems.append(f"default momentum: the first training step gave the new batch weight {d.weight_new:.4g}; "
                            f"expected {w_exp:.4g} ({conv.name}: momentum {conv.default_momentum:g}, "
                            f"{'weight of the new batch' if conv.momentum_kind == 'update_fraction' else 'decay of the old value'})")
            causes.append(diagnose.modes.default_momentum(d.weight_new, conv))
    if ratios:
        bn_check.observe(max(ratios))
    if problems:
        raise CheckFailure("constructor defaults differ from the convention:\n  " + "\n  ".join(problems)
                           + "".join(f"\n  likely cause: {c}" for c in causes)
                           + f"\n  measured by probing {bn_target.name}(num_features) (see `bnverify fingerprint`)")


@pytest.mark.bnverify_examples(0.2)
@given(data=st.data())
def test_bn_param_defaults(bn_target, bn_device, bn_check, data):
    """numpy-cs231n: bn_param with only 'mode' (no eps, momentum or running statistics) gets the convention's
    defaults: eps in the output, the default momentum in the first update from zero statistics."""
    if bn_target.kind != "numpy-cs231n":
        pytest.skip(f"kind {bn_target.kind}: measured by test_constructor_defaults (torch-module) or passed on every "
                    "call (torch-functional)")
    conv = bn_target.convention
    case = data.draw(cases(2, torch.float64, max_numel=200), label="case")
    c = case.shape[1]
    # variances near the default eps, so that eps shows in the output
    x = make_input(np.random.default_rng(case.seed + 9), case.shape, "tiny_var", conv.default_eps)
    inst = instance(bn_target, BNConfig(num_features=c, rank=2, dtype=torch.float64, device=bn_device))
    gamma, beta = load_params(inst, case, bn_device)
    for key in ("eps", "momentum", "running_mean", "running_var"):
        inst.bn_param.pop(key, None)  # type: ignore[attr-defined]
    out = inst.forward(tensor(x, torch.float64, bn_device), training=True)
    ref, _ = oracle.forward_train(x, gamma, beta, conv.default_eps)
    tol = tols.forward_train(x, gamma, beta, conv.default_eps, torch.float64)
    cmp = compare(out, ref, tol, f"training-mode output with bn_param = {{'mode': 'train'}} (default eps "
                                 f"{conv.default_eps:g}, {conv.name} convention)")
    bn_check.observe(cmp.ratio, cmp.max_abs_err)
    if not cmp.ok:
        cmp.causes = (diagnose.conventions.default_eps_output(to_f64(out), x, gamma, beta, conv, tol)
                      or diagnose.forward.train_output(to_f64(out), x, gamma, beta, conv.default_eps, tol, torch.float64))
        raise CheckFailure(cmp.report() + f"\n  case: {case.describe()}")
    rm, rv = running64(inst, "after a training step from a bn_param without them")
    zeros = np.zeros(c)
    w = conv.to_update_fraction(conv.default_momentum)
    bm, bv = tols.running_update(x, zeros, zeros, w, conv.unbiased_running_var, torch.float64, zeros, zeros)
    erm, erv, _ = oracle.update_running(zeros, zeros, x, momentum=conv.default_momentum,
                                        momentum_kind=conv.momentum_kind, unbiased=conv.unbiased_running_var)
    expl = (f"{conv.describe()}; statistics absent from bn_param start at zero (the course template's "
            "np.zeros(D)); bound of one two-pass update (bnverify.tolerances.running_update)")
    for name, got, exp, bnd in (("running_mean", rm, erm, bm), ("running_var", rv, erv, bv)):
        c_ = _channel_cmp(got, exp, bnd, f"{name} after one step from a bn_param without eps/momentum/statistics", expl)
        bn_check.observe(c_.ratio, c_.max_abs_err)
        if not c_.ok:
            c_.causes = diagnose.modes.bn_param_defaults(conv, x, rm, rv)
            raise CheckFailure(c_.report() + f"\n  case: {case.describe()}")


# --------------------------------------------------------------------------- eval

@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.bnverify_examples(0.34)
@given(data=st.data())
def test_eval_uses_running_stats(bn_target, bn_device, bn_check, dtype, data):
    """After training, eval output uses the stored running statistics, and eval never changes them."""
    case = _case(bn_target, bn_device, data, dtype)
    ordinary_first(case, bn_check, lambda c, chk: _check_eval_uses_running_stats(bn_target, c, bn_device, chk),
                   inputs=lambda c: [*batches(c, STEPS), _eval_batch(c)])


def _eval_batch(case: Case) -> np.ndarray:
    """A batch the training steps never saw, of the case's ``derived_conditioning``."""
    rng = np.random.default_rng(case.seed + 5)
    return to_dtype_values(make_input(rng, case.shape, derived_conditioning(case), case.eps), case.dtype)


def _check_eval_uses_running_stats(target: Any, case: Case, device: str, check: Any) -> None:
    """Eval after training on ``case``'s batches uses the running statistics and leaves them as they were."""
    inst, gamma, beta = build(target, case, device, momentum=target.convention.default_momentum)
    _train_some(inst, case, device)
    rm, rv = running64(inst, "after training")
    count = _count(inst)
    x_eval = _eval_batch(case)
    cmps = []
    for i in range(2):
        cmp, _ = _eval_compare(inst, x_eval if i == 0 else case.x, case, device, gamma, beta,
                               f"eval-mode output after {STEPS} training steps (eval call {i + 1})")
        cmps.append(cmp)
    rm2, rv2 = running64(inst, "after eval")
    worst = max(cmps, key=lambda c: c.ratio)
    drift = [n for n, a, b in (("running_mean", rm, rm2), ("running_var", rv, rv2)) if not np.array_equal(a, b)]
    if _count(inst) != count:
        drift.append(f"num_batches_tracked ({count} -> {_count(inst)})")
    check.observe(worst.ratio if not drift else max(worst.ratio, math.inf), worst.max_abs_err)
    if drift:
        diff = float(np.max(np.abs(rm2 - rm))) if "running_mean" in drift else float(np.max(np.abs(rv2 - rv)))
        raise CheckFailure(f"eval mode changed {', '.join(drift)} (max change {diff:.3g}); eval must read the running "
                           "statistics and never update them"
                           + diagnose.common.cause_lines(diagnose.modes.eval_updates(
                               target.convention, target.convention.default_momentum, rm, rv, [x_eval, case.x], rm2,
                               rv2, case.dtype))
                           + f"\n  case: {case.describe()}")
    if not worst.ok:
        raise CheckFailure(worst.report() + f"\n  case: {case.describe()}")


@pytest.mark.bnverify_examples(0.34)
@given(data=st.data())
def test_eval_per_sample(bn_target, bn_device, bn_check, data):
    """Eval output of a sample is independent of the rest of the batch (even a batch of one); training's is not."""
    case = _case(bn_target, bn_device, data)
    ordinary_first(case, bn_check, lambda c, chk: _check_eval_per_sample(bn_target, c, bn_device, chk),
                   inputs=_batches(2))


def _check_eval_per_sample(target: Any, case: Case, device: str, check: Any) -> None:
    """Eval output of ``case``'s samples is independent of the rest of the batch; training output is not."""
    inst, gamma, beta = build(target, case, device, momentum=target.convention.default_momentum)
    _train_some(inst, case, device, steps=2)
    x = case.x
    for label, xs in (("a batch of one sample (x[0:1])", x[:1]), ("the batch reversed", x[::-1].copy()),
                      ("the full batch", x)):
        cmp, _ = _eval_compare(inst, xs, case, device, gamma, beta, f"eval-mode output for {label}")
        check.observe(cmp.ratio, cmp.max_abs_err)
        if not cmp.ok:
            raise CheckFailure(cmp.report() + "\n  eval output must not depend on the rest of the batch (seed 004: "
                               "at test time one example may come alone)" + f"\n  case: {case.describe()}")
    # training: replacing the other samples must change sample 0's output, as the oracle says
    other = x.copy()
    rng = np.random.default_rng(case.seed + 9)
    other[1:] = to_dtype_values(other[1:] * 2.0 + rng.uniform(1, 3), case.dtype)
    if x.shape[0] < 2 or np.array_equal(other, x):
        return
    out = inst.forward(tensor(other, case.dtype, device), training=True)
    ref, _ = oracle.forward_train(other, gamma, beta, case.eps)
    tol = tols.forward_train(other, gamma, beta, case.eps, case.dtype)
    cmp = compare(out, ref, tol, "training-mode output after changing every sample but the first")
    check.observe(cmp.ratio, cmp.max_abs_err)
    if not cmp.ok:
        run = inst.get_running()
        r64 = None if run is None else (to_f64(run[0]), to_f64(run[1]))
        cmp.causes = diagnose.forward.train_output(to_f64(out), other, gamma, beta, case.eps, tol, case.dtype, r64)
        raise CheckFailure(cmp.report() + "\n  training output must depend on the batch (its statistics)"
                           + f"\n  case: {case.describe()}")


@pytest.mark.bnverify_examples(0.2)
@given(data=st.data())
def test_no_tracking(bn_target, bn_device, bn_check, data):
    """track_running_stats=False keeps no buffers and normalises with batch statistics in eval."""
    case = _case(bn_target, bn_device, data)
    ordinary_first(case, bn_check, lambda c, chk: _check_no_tracking(bn_target, c, bn_device, chk))


def _check_no_tracking(target: Any, case: Case, device: str, check: Any) -> None:
    """``track_running_stats=False``: no buffers, and eval normalises ``case``'s batch with its own statistics."""
    inst, gamma, beta = build(target, case, device, momentum=target.convention.default_momentum,
                              track_running_stats=False)
    problems = []
    if inst.get_running() is not None:
        problems.append("running_mean/running_var exist with track_running_stats=False (torch sets them to None)")
    if isinstance(inst, TorchModuleInstance):
        nbt = getattr(inst.module, "num_batches_tracked", None)
        if nbt is not None:
            problems.append("num_batches_tracked exists with track_running_stats=False (torch sets it to None)")
    if problems:
        check.metric("problems", len(problems))
        raise CheckFailure("track_running_stats=False must keep no buffers:\n  " + "\n  ".join(problems)
                           + f"\n  likely cause: {diagnose.modes.NO_TRACKING_BUFFERS}\n  case: {case.describe()}")
    x = tensor(case.x, case.dtype, device)
    out_train = inst.forward(x, training=True)
    out = inst.forward(x, training=False)
    ref, _ = oracle.forward_train(case.x, gamma, beta, case.eps)
    tol = tols.forward_train(case.x, gamma, beta, case.eps, case.dtype)
    cmp = compare(out, ref, tol, "eval-mode output with track_running_stats=False")
    check.observe(cmp.ratio, cmp.max_abs_err)
    if not cmp.ok:
        if matches(out, to_f64(out_train), tol):  # eval does what training does: the formula itself is wrong
            cmp.causes = diagnose.forward.train_output(to_f64(out), case.x, gamma, beta, case.eps, tol, case.dtype)
            raise CheckFailure(cmp.report() + "\n  eval output equals the training output, as it must here; both "
                               f"differ from the reference\n  case: {case.describe()}")
        cmp.causes = diagnose.modes.no_tracking_eval(to_f64(out), case.x, gamma, beta, case.eps, tol)
        raise CheckFailure(cmp.report() + f"\n  case: {case.describe()}")


@pytest.mark.bnverify_examples(0.2)
@given(data=st.data())
def test_affine_false(bn_target, bn_device, bn_check, data):
    """affine=False has no parameters and applies no gamma/beta."""
    case = _case(bn_target, bn_device, data)
    ordinary_first(case, bn_check, lambda c, chk: _check_affine_false(bn_target, c, bn_device, chk))


def _check_affine_false(target: Any, case: Case, device: str, check: Any) -> None:
    """``affine=False``: no parameters, and the training output of ``case``'s batch has no gamma/beta."""
    inst = instance(target, config(case, device, momentum=target.convention.default_momentum, affine=False))
    problems = []
    if isinstance(inst, TorchModuleInstance):
        params = [n for n, _ in inst.module.named_parameters()]
        if params:
            problems.append(f"affine=False still has parameters {params}: optimizers would train them and "
                            "state_dict would carry them")
    g, b = inst.get_params()
    if not isinstance(inst, TorchModuleInstance) or not problems:
        x = tensor(case.x, case.dtype, device)
        out = inst.forward(x, training=True)
        gamma = None if g is None else to_f64(g)
        beta = None if b is None else to_f64(b)
        ref, _ = oracle.forward_train(case.x, None, None, case.eps)
        tol = tols.forward_train(case.x, gamma, beta, case.eps, case.dtype)
        cmp = compare(out, ref, tol, "training-mode output with affine=False")
        check.observe(cmp.ratio, cmp.max_abs_err)
        if not cmp.ok:
            cmp.causes = diagnose.forward.train_output(to_f64(out), case.x, gamma, beta, case.eps, tol, case.dtype)
            raise CheckFailure(cmp.report() + f"\n  case: {case.describe()}")
    else:
        check.metric("problems", len(problems))  # a count, not an err/tol ratio
    if problems:
        raise CheckFailure("\n".join(problems) + f"\n  case: {case.describe()}")


@pytest.mark.bnverify_examples(0.2)
@given(data=st.data())
def test_state_dict_roundtrip(bn_target, bn_device, bn_check, data):
    """A trained module's state_dict, loaded into a fresh instance, restores its statistics, counter and outputs."""
    case = _case(bn_target, bn_device, data)
    ordinary_first(case, bn_check, lambda c, chk: _check_state_dict_roundtrip(bn_target, c, bn_device, chk),
                   inputs=_batches(STEPS))


def _check_state_dict_roundtrip(target: Any, case: Case, device: str, check: Any) -> None:
    """A module trained on ``case``'s batches and a fresh one loaded with its ``state_dict`` behave alike."""
    cfg = config(case, device, momentum=target.convention.default_momentum)
    a = instance(target, cfg)
    if not isinstance(a, TorchModuleInstance):
        pytest.skip(f"kind {target.kind} has no state_dict")
    load_params(a, case, device)
    _train_some(a, case, device)
    sd = a.call("state_dict()", lambda: a.module.state_dict())
    # judged by behaviour, wherever the module keeps its buffers (a submodule, properties): a fresh instance
    # that loads the state_dict must hold the same statistics and give the same outputs
    b = instance(target, cfg)
    assert isinstance(b, TorchModuleInstance)
    b.call("load_state_dict()", lambda: b.module.load_state_dict(sd))
    ra, rb = running64(a, "after training"), running64(b, "after load_state_dict")
    problems = [f"{n} differs after load_state_dict: max |diff| {float(np.max(np.abs(p - q))):.3g}"
                for n, p, q in (("running_mean", ra[0], rb[0]), ("running_var", ra[1], rb[1])) if not np.array_equal(p, q)]
    x = tensor(case.x, case.dtype, device)
    ya, yb = to_f64(a.forward(x, training=False)), to_f64(b.forward(x, training=False))
    if not np.array_equal(ya, yb):
        problems.append(f"eval outputs differ after load_state_dict: max |diff| {float(np.max(np.abs(ya - yb))):.3g}")
    if _count(a) != _count(b):
        problems.append(f"num_batches_tracked {_count(a)} was restored as {_count(b)}")
    a.forward(x, training=True)
    b.forward(x, training=True)
    ra, rb = running64(a, "after a further step"), running64(b, "after a further step")
    if not (np.array_equal(ra[0], rb[0]) and np.array_equal(ra[1], rb[1])):
        problems.append("a further training step from the loaded state gives different running statistics "
                        "(is state kept outside state_dict, e.g. a step counter or a cached momentum?)")
    check.metric("problems", len(problems))  # a count, not an err/tol ratio
    if problems:
        stats = ("running_mean", "running_var")
        keys = [k for k in sd if k.rsplit(".", 1)[-1] in stats]
        cause = (diagnose.common.cause_lines(diagnose.modes.state_dict_buffers(a.module, sd))
                 + f"\n  state_dict keys: {sorted(sd)}" if len(keys) < 2 else "")
        raise CheckFailure("state_dict round trip is not faithful (a fresh instance loaded with the trained one's "
                           "state_dict):\n  " + "\n  ".join(problems) + cause + f"\n  case: {case.describe()}")


def test_mode_source(bn_target, bn_device, bn_check):
    """.train()/.eval() choose batch or running statistics (a module that follows grad mode is a named design)."""
    source = bn_target.probe_mode_source(bn_device)
    bn_check.detail("mode_source", source)
    if source == "flag":
        return
    if source == "grad":
        bn_check.detail("note", diagnose.modes.GRAD_MODE_DESIGN)
        pytest.skip(diagnose.modes.GRAD_MODE_DESIGN)
    raise CheckFailure("which statistics the module normalises with does not follow .train()/.eval(): "
                       "probed with .train() under torch.no_grad() and .eval() with autograd on, running statistics "
                       f"set to mean 5, variance 4\n  likely cause: {diagnose.modes.MODE_SOURCE[source]}")


@pytest.mark.bnverify_examples(0.2)
@given(data=st.data())
def test_running_buffers_detached(bn_target, bn_device, bn_check, data):
    """After training steps with autograd on, the running statistics carry no autograd history."""
    case = _case(bn_target, bn_device, data)
    ordinary_first(case, bn_check, lambda c, chk: _check_running_buffers_detached(bn_target, c, bn_device, chk),
                   inputs=_batches(2))


def _check_running_buffers_detached(target: Any, case: Case, device: str, check: Any) -> None:
    """Training steps on ``case``'s batches with autograd on leave no autograd history in the running statistics."""
    inst, _, _ = build(target, case, device, momentum=target.convention.default_momentum)
    if not inst.differentiable:
        pytest.skip(f"kind {target.kind} has no autograd")
    for x in batches(case, 2):
        inst.forward(tensor(x, case.dtype, device), training=True, autograd=True)
    run = inst.get_running()
    if run is None:
        pytest.skip("no running statistics")
    attached = [name for name, t in zip(("running_mean", "running_var"), run)
                if isinstance(t, torch.Tensor) and (t.requires_grad or t.grad_fn is not None)]
    check.metric("problems", len(attached))  # a count, not an err/tol ratio
    if attached:
        raise CheckFailure(f"{' and '.join(attached)} require grad / have a grad_fn after two training steps with an "
                           f"input that requires grad\n  likely cause: {diagnose.modes.GRAPH_IN_BUFFERS}"
                           f"\n  case: {case.describe()}")


def _plan_text(plan: list[tuple[bool, int]]) -> str:
    return " -> ".join(f"{'train' if t else 'eval'}(batch {i})" for t, i in plan)


@pytest.mark.bnverify_examples(0.34)
@given(data=st.data())
def test_mode_toggling(bn_target, bn_device, bn_check, data):
    """train, eval, train, eval, eval, train, eval: every step matches the oracle run through the same sequence."""
    case = _case(bn_target, bn_device, data)
    ordinary_first(case, bn_check, lambda c, chk: _check_mode_toggling(bn_target, c, bn_device, chk),
                   inputs=_batches(4))


def _check_mode_toggling(target: Any, case: Case, device: str, check: Any) -> None:
    """A train/eval sequence over ``case``'s batches matches the oracle at every step."""
    conv = target.convention
    inst, gamma, beta = build(target, case, device, momentum=conv.default_momentum)
    rm, rv = running64(inst, "after construction")
    rm0, rv0 = rm.copy(), rv.copy()
    xs = batches(case, 4)
    plan = [(True, 0), (False, 1), (True, 2), (False, 3), (False, 0), (True, 3), (False, 2)]
    seen: list[tuple[int, np.ndarray, np.ndarray]] = []  # the running statistics of each eval step that passed
    for step, (training, i) in enumerate(plan):
        x = xs[i]
        mode = "train" if training else "eval"
        if training:
            out = inst.forward(tensor(x, case.dtype, device), training=True)
            ref, _ = oracle.forward_train(x, gamma, beta, case.eps)
            tol = tols.forward_train(x, gamma, beta, case.eps, case.dtype)
            rm, rv, _ = oracle.update_running(rm, rv, x, momentum=conv.default_momentum, momentum_kind=conv.momentum_kind,
                                              unbiased=conv.unbiased_running_var)
        else:
            got_rm, got_rv = running64(inst, f"at step {step + 1}")
            bm, bv = tols.toggled_running(x, rm, rv, conv.unbiased_running_var, case.dtype)
            for name, got, exp, bnd in (("running_mean", got_rm, rm, bm), ("running_var", got_rv, rv, bv)):
                c = _channel_cmp(got, exp, bnd, f"{name} before eval step {step + 1} of the sequence", conv.describe())
                check.observe(c.ratio, c.max_abs_err)
                if not c.ok:
                    c.causes = diagnose.modes.mode_switch(conv, conv.default_momentum, plan, xs, rm0, rv0, step,
                                                          got_rm, got_rv, case.dtype)
                    raise CheckFailure(c.report() + f"\n  sequence so far: {_plan_text(plan[:step + 1])}"
                                       + f"\n  case: {case.describe()}")
            out = inst.forward(tensor(x, case.dtype, device), training=False)
            ref = oracle.forward_eval(x, gamma, beta, got_rm, got_rv, case.eps)
            tol = tols.forward_eval(x, gamma, beta, got_rm, got_rv, case.eps, case.dtype)
        cmp = compare(out, ref, tol, f"{mode}-mode output at step {step + 1} of the sequence")
        check.observe(cmp.ratio, cmp.max_abs_err)
        if not cmp.ok:
            if training:
                cmp.causes = diagnose.forward.train_output(to_f64(out), x, gamma, beta, case.eps, tol, case.dtype,
                                                           running64(inst, "now"))
            else:
                cmp.causes = (diagnose.forward.eval_output(to_f64(out), x, gamma, beta, got_rm, got_rv, case.eps, tol)
                              + diagnose.modes.eval_cache(to_f64(out), x, gamma, beta, seen, case.eps, tol)
                              + diagnose.modes.eval_updates_output(conv, conv.default_momentum, to_f64(out), x, gamma,
                                                                   beta, got_rm, got_rv, case.eps, case.dtype))
            raise CheckFailure(cmp.report() + f"\n  sequence so far: {_plan_text(plan[:step + 1])}"
                               + f"\n  case: {case.describe()}")
        if not training:
            seen.append((step + 1, got_rm, got_rv))


@pytest.mark.bnverify_examples(0.2)
@given(data=st.data())
def test_single_value_per_channel(bn_target, bn_device, bn_check, data):
    """One value per channel in training: a clear error where the running variance is unbiased (torch's m/(m-1) is
    1/0 there), else the biased update; running statistics never corrupted."""
    case = _case(bn_target, bn_device, data)
    conv = bn_target.convention
    ranks = bn_target.supported_ranks(bn_device) or [2]
    rank = 2 if 2 in ranks else ranks[0]
    c = case.shape[1]
    shape = (1, c) + (1,) * (rank - 2)
    x = to_dtype_values(np.random.default_rng(case.seed).uniform(-3, 3, shape), case.dtype)
    inst = instance(bn_target, BNConfig(num_features=c, rank=rank, eps=case.eps, momentum=conv.default_momentum,
                                        dtype=case.dtype, device=bn_device))
    rm0, rv0 = running64(inst, "after construction")
    err: str | None = None
    out: torch.Tensor | None = None
    try:
        out = inst.forward(tensor(x, case.dtype, bn_device), training=True)
    except TargetError as exc:
        if bn_target.watchdog.hung:
            raise
        err = str(exc)
    rm, rv = running64(inst, "after the call")
    problems, causes = [], []
    if err is not None:
        if not (np.array_equal(rm, rm0) and np.array_equal(rv, rv0)):
            problems.append(f"the call raised, but the running statistics changed first: mean {rm0[:3].tolist()} -> "
                            f"{rm[:3].tolist()}, var {rv0[:3].tolist()} -> {rv[:3].tolist()}")
            causes.append(diagnose.modes.SINGLE_VALUE_CORRUPTS)
    else:
        # the aspect that decides, not the convention's name: a composed torch convention (torch+eps=1e-6) is
        # held to torch's error, and any convention with a biased running variance to the biased update
        if conv.unbiased_running_var:
            problems.append(f"training on input of shape {shape} (one value per channel) returned without an error")
            causes.append(diagnose.modes.SINGLE_VALUE_NO_ERROR)
        if out is not None and not bool(torch.isfinite(out).all()):
            problems.append("the output has NaN/inf")
        if not (np.all(np.isfinite(rm)) and np.all(np.isfinite(rv))):
            problems.append(f"the running statistics became non-finite: mean {rm[:3].tolist()}, var {rv[:3].tolist()}")
            causes += diagnose.modes.single_value_nonfinite(conv, conv.default_momentum, x, rm0, rv0, rm, rv)
        elif not conv.unbiased_running_var:
            erm, erv, _ = oracle.update_running(rm0, rv0, x, momentum=conv.default_momentum,
                                                momentum_kind=conv.momentum_kind, unbiased=False)
            rtol, atol = tols.SINGLE_VALUE_RTOL, tols.SINGLE_VALUE_ATOL
            if not (np.allclose(rm, erm, rtol=rtol, atol=atol) and np.allclose(rv, erv, rtol=rtol, atol=atol)):
                problems.append(f"running statistics after one value per channel: expected mean {erm[:3].tolist()}, "
                                f"var {erv[:3].tolist()}; got {rm[:3].tolist()}, {rv[:3].tolist()}")
    bn_check.metric("problems", len(problems))  # a count, not an err/tol ratio
    if problems:
        raise CheckFailure(f"one value per channel in training ({conv.name} convention):\n  " + "\n  ".join(problems)
                           + "".join(f"\n  likely cause: {c_}" for c_ in causes)
                           + (f"\n  the target said: {err}" if err else ""))


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.bnverify_examples(0.34)
@given(data=st.data())
def test_eps_honoured(bn_target, bn_device, bn_check, dtype, data):
    """The constructor's (drawn) eps is used in eval and training: variances near eps make it visible."""
    case = _case(bn_target, bn_device, data, dtype)
    inst, gamma, beta = build(bn_target, case, bn_device, momentum=bn_target.convention.default_momentum)
    c = case.shape[1]
    rng = np.random.default_rng(case.seed + 3)
    rm = to_dtype_values(rng.uniform(-1, 1, c), case.dtype)
    rv = to_dtype_values(case.eps * np.exp(rng.uniform(np.log(1e-2), np.log(1e2), c)), case.dtype)
    inst.set_running(tensor(rm, case.dtype, bn_device), tensor(rv, case.dtype, bn_device))
    cmp, out = _eval_compare(inst, case.x, case, bn_device, gamma, beta,
                             f"eval-mode output with running_var near eps={case.eps:.3g}")
    bn_check.observe(cmp.ratio, cmp.max_abs_err)
    if not cmp.ok:
        rm64, rv64 = running64(inst, "now")
        cmp.causes = cmp.causes + diagnose.modes.hardcoded_eps(out, case.x, gamma, beta, rm64, rv64, case.eps,
                                                               case.dtype)
        raise CheckFailure(cmp.report() + f"\n  case: {case.describe()}")
    xt = to_dtype_values(make_input(rng, case.shape, "tiny_var", case.eps), case.dtype)
    out_t = inst.forward(tensor(xt, case.dtype, bn_device), training=True)
    ref, _ = oracle.forward_train(xt, gamma, beta, case.eps)
    tol = tols.forward_train(xt, gamma, beta, case.eps, case.dtype)
    cmp = compare(out_t, ref, tol, f"training-mode output for batch variances near eps={case.eps:.3g}")
    bn_check.observe(cmp.ratio, cmp.max_abs_err)
    if not cmp.ok:
        mu, var, _ = oracle.batch_stats(xt)
        cmp.causes = diagnose.modes.hardcoded_eps(to_f64(out_t), xt, gamma, beta, mu, var, case.eps, case.dtype)
        raise CheckFailure(cmp.report() + f"\n  case: {replace(case, x=xt, conditioning='tiny_var').describe()} "
                           "(the training batch, drawn by the check with variances near eps)")


def _layer(u: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float64 Linear (rank 2) or 'same'-padded Conv1d/2d/3d, in torch's (out, in, *k) layout."""
    ut, wt, bt = (torch.from_numpy(np.ascontiguousarray(a)).double() for a in (u, w, b))
    if u.ndim == 2:
        out = torch.nn.functional.linear(ut, wt, bt)
    else:
        conv = {3: torch.nn.functional.conv1d, 4: torch.nn.functional.conv2d, 5: torch.nn.functional.conv3d}[u.ndim]
        out = conv(ut, wt, bt, padding=w.shape[-1] // 2)
    return out.numpy()


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.bnverify_examples(0.34)
@given(data=st.data())
def test_fold(bn_target, bn_device, bn_check, dtype, data):
    """Eval output equals seed 000's folded transform, and a batch norm folded into the preceding Linear/Conv."""
    case = _case(bn_target, bn_device, data, dtype)
    ordinary_first(case, bn_check, lambda c, chk: _check_fold(bn_target, c, bn_device, chk),
                   inputs=_batches(STEPS))


def _check_fold(target: Any, case: Case, device: str, check: Any) -> None:
    """Eval after training on ``case``'s batches equals the folded transform and the batch norm folded into a layer."""
    inst, gamma, beta = build(target, case, device, momentum=target.convention.default_momentum)
    _train_some(inst, case, device)
    rm, rv = running64(inst, "after training")
    scale, shift = oracle.fold(gamma, beta, rm, rv, case.eps)
    out = inst.forward(tensor(case.x, case.dtype, device), training=False)
    nd = case.x.ndim
    y = oracle.per_channel(scale, nd) * case.x + oracle.per_channel(shift, nd)
    tol = tols.forward_eval(case.x, gamma, beta, rm, rv, case.eps, case.dtype)
    cmp = compare(out, y, tol, "eval-mode output vs the folded transform gamma/sqrt(Var+eps) x + (beta - gamma E[x]/sqrt(Var+eps))")
    check.observe(cmp.ratio, cmp.max_abs_err)
    if not cmp.ok:
        cmp.causes = diagnose.forward.eval_output(to_f64(out), case.x, gamma, beta, rm, rv, case.eps, tol)
        raise CheckFailure(cmp.report() + "\n  the folded transform uses the target's own running statistics and "
                           f"parameters (seed 000)\n  case: {case.describe()}")
    # fold into the preceding layer: Linear for rank 2, Conv for ranks 3-5 (kernel 1 and 3, 'same' padding)
    rng = np.random.default_rng(case.seed + 11)
    c = case.shape[1]
    cin = 3
    u = to_dtype_values(rng.standard_normal((case.shape[0], cin) + case.shape[2:]), case.dtype)
    k = 1 if nd == 2 else 3
    w = rng.standard_normal((c, cin) + (k,) * (nd - 2)) / math.sqrt(cin * k ** (nd - 2))
    bias0 = rng.uniform(-1, 1, c)
    z_exact = _layer(u, w, bias0)
    z = to_dtype_values(z_exact, case.dtype)
    outz = inst.forward(tensor(z, case.dtype, device), training=False)
    wf, bf = oracle.fold_into_linear(w, bias0, gamma, beta, rm, rv, case.eps)
    yz = _layer(u, wf, bf)
    tol = tols.folded_layer(z, z_exact, gamma, beta, rm, rv, case.eps, case.dtype)
    layer = "Linear" if nd == 2 else f"Conv{nd - 2}d"
    cmp = compare(outz, yz, tol, f"eval output of {layer} -> batch norm vs the batch norm folded into the {layer}")
    check.observe(cmp.ratio, cmp.max_abs_err)
    if not cmp.ok:
        cmp.causes = diagnose.modes.folded_layer(to_f64(outz), z, gamma, beta, rm, rv, case.eps, case.dtype)
        raise CheckFailure(cmp.report() + f"\n  case: {case.describe()}")
