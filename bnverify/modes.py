"""Train/eval modes, running statistics and framework conventions: the checks of the ``modes`` suite.

Written once against ``BNInstance`` (like ``bncheck``).  Each check drives
the target through a short life (construct, a few training steps, eval,
toggles, a state_dict round trip), simulates the same life with the float64
oracle (``reference.batchnorm.update_running`` with the target's declared
convention), records the worst error/tolerance ratio, and raises
``CheckFailure`` saying what was expected, what came back, by how much, and
which known mistake or other convention the numbers match.

The seeds define the behaviour: running statistics are exponentially
weighted averages of the batch statistics (seed 004); ``momentum=None`` is
the cumulative average, i.e. seed 000's population statistics
``E[x] = E_B[mu_B]``, ``Var[x] = m/(m-1) E_B[sigma_B^2]``; inference uses
them, per sample, and is the folded affine map
``y = gamma/sqrt(Var+eps) x + (beta - gamma E[x]/sqrt(Var+eps))`` (seed 000).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

from bnverify import diagnose
from bnverify import tolerances as tols
from bnverify.adapter import BNConfig, BNInstance, BNTarget, NotSupported, TargetError, TorchModuleInstance
from bnverify.compare import CheckFailure, Comparison, compare, to_f64
from bnverify.conventions import CONVENTIONS, Convention
from bnverify.reference import batchnorm as oracle
from bnverify.strategies import Case, make_input, tensor, to_dtype_values

STEPS = 3  # training steps per life: enough to separate momentum conventions and to compound errors


# --------------------------------------------------------------------------- helpers

def config(target: BNTarget, case: Case, device: str, *, momentum: float | None | str = "default",
           track_running_stats: bool = True, affine: bool | None = None) -> BNConfig:
    """A ``BNConfig`` for ``case``; ``momentum="default"`` takes the convention's default value."""
    conv = target.convention
    return BNConfig(
        num_features=case.shape[1], rank=len(case.shape), eps=case.eps,
        momentum=conv.default_momentum if momentum == "default" else momentum,  # type: ignore[arg-type]
        affine=case.affine if affine is None else affine, track_running_stats=track_running_stats,
        dtype=case.dtype, device=device,
    )


def new_instance(target: BNTarget, cfg: BNConfig) -> BNInstance:
    try:
        return target.instance(cfg)
    except NotSupported as exc:
        pytest.skip(str(exc))


def set_case_params(inst: BNInstance, case: Case, device: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Load the case's gamma/beta into the instance; return what it holds, in float64."""
    if case.affine:
        assert case.gamma is not None and case.beta is not None
        inst.set_params(tensor(case.gamma, case.dtype, device), tensor(case.beta, case.dtype, device))
    g, b = inst.get_params()
    return (None if g is None else to_f64(g)), (None if b is None else to_f64(b))


def batches(case: Case, n: int) -> list[np.ndarray]:
    """``n`` batches of the case's shape with different per-channel statistics, in the case's dtype."""
    rng = np.random.default_rng(case.seed + 17)
    out = [case.x]
    while len(out) < n:
        out.append(to_dtype_values(make_input(rng, case.shape, "normal", case.eps), case.dtype))
    return out


def running64(inst: BNInstance, what: str) -> tuple[np.ndarray, np.ndarray]:
    run = inst.get_running()
    if run is None:
        raise CheckFailure(f"{inst.target.name} has no running_mean/running_var {what} with track_running_stats=True; "
                           "SPEC section 2 requires both buffers")
    return to_f64(run[0]).copy(), to_f64(run[1]).copy()


def momentum_label(conv: Convention, momentum: float | None) -> str:
    if momentum is None:
        return "momentum=None (cumulative average)"
    w = conv.to_update_fraction(momentum)
    return f"momentum={momentum:.4g} (new batch weight {w:.4g} under the {conv.name} convention)"


def conventions_with(momentum_kind: str, unbiased: bool) -> list[str]:
    return [c.name for c in CONVENTIONS.values() if c.momentum_kind == momentum_kind and c.unbiased_running_var == unbiased]


def convention_hint(names: list[str], current: str) -> str:
    others = [n for n in names if n != current]
    if not others:
        return ""
    first = others[0]
    rest = f" (or {', '.join(others[1:])}; they differ in default eps/momentum, see `bnverify fingerprint`)" if len(others) > 1 else ""
    return f"{'/'.join(n.capitalize() if n != 'cs231n' else n for n in others)} convention? pass --convention {first}{rest}"


@dataclass
class Life:
    """The oracle's running statistics after each step, and their error bounds."""

    means: list[np.ndarray]
    vars: list[np.ndarray]
    mean_bounds: list[np.ndarray]
    var_bounds: list[np.ndarray]
    counts: list[int]


def simulate(xs: list[np.ndarray], rm0: np.ndarray, rv0: np.ndarray, n0: int, *, momentum: float | None,
             momentum_kind: str, unbiased: bool, dtype: torch.dtype) -> Life:
    """Run ``update_running`` over ``xs`` and carry ``tolerances.running_update`` bounds along."""
    rm, rv, n = np.asarray(rm0, np.float64), np.asarray(rv0, np.float64), n0
    bm, bv = np.zeros_like(rm), np.zeros_like(rv)
    life = Life([], [], [], [], [])
    for x in xs:
        w = (1.0 / (n + 1)) if momentum is None else (
            float(momentum) if momentum_kind == "update_fraction" else 1.0 - float(momentum))
        bm, bv = tols.running_update(x, rm, rv, w, unbiased, dtype, bm, bv)
        rm, rv, n = oracle.update_running(rm, rv, x, momentum=momentum, momentum_kind=momentum_kind,  # type: ignore[arg-type]
                                          unbiased=unbiased, num_batches_tracked=n)
        life.means.append(rm)
        life.vars.append(rv)
        life.mean_bounds.append(bm)
        life.var_bounds.append(bv)
        life.counts.append(n)
    return life


def _cmp(actual: np.ndarray, expected: np.ndarray, bound: np.ndarray, what: str, explanation: str) -> Comparison:
    return compare(actual, expected, tols.Tolerance(bound, explanation), what, channel_axis=0)


# --------------------------------------------------------------------------- running statistics

def _running_hypotheses(conv: Convention, xs: list[np.ndarray], rm0: np.ndarray, rv0: np.ndarray,
                        momentum: float | None, dtype: torch.dtype) -> list[tuple[str, Life]]:
    """Other plausible behaviours, as oracle lives, with the sentence that names each."""
    hyps: list[tuple[str, Life]] = []
    if momentum is not None:
        for kind in ("update_fraction", "keep_fraction"):
            for unbiased in (True, False):
                if kind == conv.momentum_kind and unbiased == conv.unbiased_running_var:
                    continue
                names = conventions_with(kind, unbiased)
                parts = []
                if unbiased != conv.unbiased_running_var:
                    parts.append("the biased estimator (sigma_B^2, no m/(m-1))" if not unbiased
                                 else "the unbiased estimator m/(m-1) sigma_B^2")
                if kind != conv.momentum_kind:
                    parts.append("momentum as the decay of the old value, r = m r + (1-m) b" if kind == "keep_fraction"
                                 else "momentum as the weight of the new batch, r = (1-m) r + m b")
                text = "running statistics match " + " and ".join(parts)
                hint = convention_hint(names, conv.name)
                if hint:
                    text += ": " + hint
                elif not unbiased and conv.unbiased_running_var:
                    text += ": the running variance must store m/(m-1) sigma_B^2 (seed 000, torch), bug class B1"
                elif unbiased and not conv.unbiased_running_var:
                    text += f": the {conv.name} convention stores the biased batch variance, bug class B2"
                else:
                    text += f": the {conv.name} convention's momentum is the other way round, bug class B4"
                hyps.append((text, simulate(xs, rm0, rv0, 0, momentum=momentum, momentum_kind=kind,
                                            unbiased=unbiased, dtype=dtype)))
        if momentum != conv.default_momentum:
            hyps.append((f"running statistics match the default momentum {conv.default_momentum:g}: the constructor's "
                         f"momentum={momentum:g} is ignored (hard-coded?)",
                         simulate(xs, rm0, rv0, 0, momentum=conv.default_momentum, momentum_kind=conv.momentum_kind,
                                  unbiased=conv.unbiased_running_var, dtype=dtype)))
    else:
        hyps.append((f"running statistics match an exponential average with momentum {conv.default_momentum:g}: "
                     "momentum=None must give the cumulative average 1/num_batches_tracked (bug class B26)",
                     simulate(xs, rm0, rv0, 0, momentum=conv.default_momentum, momentum_kind=conv.momentum_kind,
                              unbiased=conv.unbiased_running_var, dtype=dtype)))
        hyps.append(("running statistics match the cumulative average of the biased batch variances: Var[x] = "
                     "m/(m-1) E_B[sigma_B^2] (seed 000) needs the unbiased factor",
                     simulate(xs, rm0, rv0, 0, momentum=None, momentum_kind=conv.momentum_kind, unbiased=False,
                              dtype=dtype)))
    frozen = Life([rm0] * len(xs), [rv0] * len(xs), [np.zeros_like(rm0)] * len(xs), [np.zeros_like(rv0)] * len(xs),
                  list(range(1, len(xs) + 1)))
    hyps.append(("the running statistics never change in training: they are not updated (or updated on a copy) "
                 "(bug class B8)", frozen))
    last = Life([oracle.batch_stats(x)[0] for x in xs],
                [oracle.batch_stats(x)[1] * (x.size // x.shape[1]) / max(x.size // x.shape[1] - 1, 1)
                 if conv.unbiased_running_var else oracle.batch_stats(x)[1] for x in xs],
                [np.zeros_like(rm0)] * len(xs), [np.zeros_like(rv0)] * len(xs), list(range(1, len(xs) + 1)))
    hyps.append(("the running statistics equal the last batch's statistics: momentum treated as 1 (or the "
                 "buffers overwritten instead of averaged)", last))
    return hyps


def _life_matches(means: list[np.ndarray], vars_: list[np.ndarray], life: Life, ref: Life) -> bool:
    for i in range(len(means)):
        for got, exp, b in ((means[i], life.means[i], ref.mean_bounds[i]), (vars_[i], life.vars[i], ref.var_bounds[i])):
            with np.errstate(invalid="ignore"):
                if not np.all(np.abs(got - exp) <= np.maximum(b, 1e-300) * 1.0001):
                    return False
    return True


def running_stats(target: BNTarget, case: Case, device: str, check: Any, *, momentum: float | None,
                  steps: int = STEPS) -> None:
    """Running mean/variance after each of ``steps`` training steps equal the oracle's, in the convention."""
    conv = target.convention
    inst = new_instance(target, config(target, case, device, momentum=momentum))
    set_case_params(inst, case, device)
    xs = batches(case, steps)
    rm0, rv0 = running64(inst, "after construction")
    means, vars_ = [], []
    for x in xs:
        inst.forward(tensor(x, case.dtype, device), training=True)
        rm, rv = running64(inst, "after a training step")
        means.append(rm)
        vars_.append(rv)
    ref = simulate(xs, rm0, rv0, 0, momentum=momentum, momentum_kind=conv.momentum_kind,
                   unbiased=conv.unbiased_running_var, dtype=case.dtype)
    expl = (f"{conv.describe()}; bound for {steps} steps of a two-pass update in {str(case.dtype).replace('torch.', '')} "
            f"(derivation: bnverify.tolerances.running_update)")
    cmps = []
    for i in range(steps):
        cmps.append(_cmp(means[i], ref.means[i], ref.mean_bounds[i], f"running_mean after training step {i + 1} of {steps}", expl))
        cmps.append(_cmp(vars_[i], ref.vars[i], ref.var_bounds[i], f"running_var after training step {i + 1} of {steps}", expl))
    worst = max(cmps, key=lambda c: c.ratio)
    check.observe(worst.ratio, worst.max_abs_err)
    if worst.ok:
        return
    causes = [text for text, life in _running_hypotheses(conv, xs, rm0, rv0, momentum, case.dtype)
              if _life_matches(means, vars_, life, ref)]
    first_bad = next(c for c in cmps if not c.ok)
    first_bad.causes = causes
    raise CheckFailure(first_bad.report() + f"\n  {momentum_label(conv, momentum)}; running statistics started at "
                       f"mean {rm0.round(4).tolist()[:4]}, var {rv0.round(4).tolist()[:4]}"
                       + f"\n  case: {case.describe()}")


def num_batches_tracked(target: BNTarget, case: Case, device: str, check: Any) -> None:
    """``num_batches_tracked`` is an integer 0 after construction, +1 per training forward, unchanged by eval."""
    inst = new_instance(target, config(target, case, device))
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
    if got != 0:
        problems.append(f"after construction: expected 0, got {got}")
    x = tensor(case.x, case.dtype, device)
    for step, training in enumerate((True, True, False, True, False, False)):
        inst.forward(x, training=training)
        expected += 1 if training else 0
        got = count(f"after call {step + 1}")
        if got != expected:
            mode = "training" if training else "eval"
            problems.append(f"after call {step + 1} ({mode}): expected {expected}, got {got}")
    check.observe(float(len(problems)))
    if problems:
        cause = ("it counts eval calls too: only training-mode forwards with track_running_stats=True count"
                 if any("(eval)" in p for p in problems) else
                 "it is never (or wrongly) incremented: momentum=None's 1/num_batches_tracked depends on it")
        raise CheckFailure("num_batches_tracked is wrong:\n  " + "\n  ".join(problems[:4]) +
                           f"\n  likely cause: {cause}\n  case: {case.describe()}")


# --------------------------------------------------------------------------- construction

def fresh_defaults(target: BNTarget, case: Case, device: str, check: Any) -> None:
    """A fresh instance holds gamma 1, beta 0, running mean 0, running variance 1."""
    inst = new_instance(target, config(target, case, device, affine=True))
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
    check.observe(float(len(problems)))
    if problems:
        raise CheckFailure("a freshly constructed batch norm must start as the identity in eval "
                           "(gamma 1, beta 0, running mean 0, running variance 1):\n  " + "\n  ".join(problems)
                           + "\n  likely cause: buffers/parameters initialised with torch.empty or swapped fills")


def constructor_defaults(target: BNTarget, device: str, check: Any) -> None:
    """``cls(num_features)`` alone gets the convention's default eps and momentum (measured, not read)."""
    from bnverify.fingerprint import probe_defaults

    if target.kind != "torch-module":
        pytest.skip(f"kind {target.kind}: the harness passes eps and momentum on every call, so there is no "
                    "constructor default to measure")
    conv = target.convention
    d = probe_defaults(target, device)
    problems, causes = [], []
    w_exp = conv.to_update_fraction(conv.default_momentum)
    ratio = 0.0
    if d.eps is None or not math.isfinite(d.eps):
        problems.append(f"default eps could not be measured ({d.note})")
        ratio = math.inf
    else:
        r_eps = abs(d.eps - conv.default_eps) / (tols.DEFAULT_EPS_RTOL * conv.default_eps)
        ratio = max(ratio, r_eps)
        if r_eps > 1:
            problems.append(f"default eps: expected {conv.default_eps:g} ({conv.name}), measured {d.eps:.4g}")
            names = [c.name for c in CONVENTIONS.values()
                     if abs(d.eps - c.default_eps) <= tols.DEFAULT_EPS_RTOL * c.default_eps]
            if names:
                causes.append(f"the default eps {d.eps:.3g} is that of {', '.join(names)}: "
                              + (convention_hint(names, conv.name) or "wrong default eps when porting (bug class B5)"))
            else:
                causes.append("wrong default eps when porting (bug class B5)")
    if d.weight_new is None or not math.isfinite(d.weight_new):
        problems.append(f"default momentum could not be measured ({d.note})")
        ratio = math.inf
    else:
        r_m = abs(d.weight_new - w_exp) / tols.DEFAULT_MOMENTUM_ATOL
        ratio = max(ratio, r_m)
        if r_m > 1:
            problems.append(f"default momentum: the first training step gave the new batch weight {d.weight_new:.4g}; "
                            f"expected {w_exp:.4g} ({conv.name}: momentum {conv.default_momentum:g}, "
                            f"{'weight of the new batch' if conv.momentum_kind == 'update_fraction' else 'decay of the old value'})")
            names = [c.name for c in CONVENTIONS.values()
                     if abs(c.to_update_fraction(c.default_momentum) - d.weight_new) <= tols.DEFAULT_MOMENTUM_ATOL]
            if names:
                causes.append(f"a new-batch weight of {d.weight_new:.3g} is the default of {', '.join(names)}: "
                              + (convention_hint(names, conv.name) or "momentum default inverted (bug class B4)"))
            else:
                causes.append("momentum default inverted or mistyped (bug class B4/B6)")
    check.observe(ratio)
    if problems:
        raise CheckFailure("constructor defaults differ from the convention:\n  " + "\n  ".join(problems)
                           + "".join(f"\n  likely cause: {c}" for c in causes)
                           + f"\n  measured by probing {target.name}(num_features) (see `bnverify fingerprint`)")


def affine_false(target: BNTarget, case: Case, device: str, check: Any) -> None:
    """``affine=False`` has no parameters and normalises without gamma/beta."""
    inst = new_instance(target, config(target, case, device, affine=False))
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
            cmp.causes = diagnose.forward_train(to_f64(out), case.x, gamma, beta, case.eps, tol, case.dtype)
            raise CheckFailure(cmp.report() + f"\n  case: {case.describe()}")
    else:
        check.observe(float(len(problems)))
    if problems:
        raise CheckFailure("\n".join(problems) + f"\n  case: {case.describe()}")


# --------------------------------------------------------------------------- eval

def _eval_compare(inst: BNInstance, x: np.ndarray, case: Case, device: str, gamma: np.ndarray | None,
                  beta: np.ndarray | None, what: str) -> tuple[Comparison, np.ndarray]:
    rm, rv = running64(inst, "before eval")
    out = inst.forward(tensor(x, case.dtype, device), training=False)
    ref = oracle.forward_eval(x, gamma, beta, rm, rv, case.eps)
    tol = tols.forward_eval(x, gamma, beta, rm, rv, case.eps, case.dtype)
    cmp = compare(out, ref, tol, what)
    if not cmp.ok:
        cmp.causes = diagnose.forward_eval(to_f64(out), x, gamma, beta, rm, rv, case.eps, tol)
    return cmp, to_f64(out)


def train_some(inst: BNInstance, case: Case, device: str, steps: int = STEPS) -> None:
    for x in batches(case, steps):
        inst.forward(tensor(x, case.dtype, device), training=True)


def eval_uses_running(target: BNTarget, case: Case, device: str, check: Any) -> None:
    """After training, eval output is the oracle's with the stored running statistics; eval leaves them alone."""
    inst = new_instance(target, config(target, case, device))
    gamma, beta = set_case_params(inst, case, device)
    train_some(inst, case, device)
    rm, rv = running64(inst, "after training")
    count = _count(inst)
    rng = np.random.default_rng(case.seed + 5)
    x_eval = to_dtype_values(make_input(rng, case.shape, "normal", case.eps), case.dtype)
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
                           "statistics and never update them\n  likely cause: the update is not guarded by "
                           "`if self.training` (running statistics drift at inference, bug class B10)"
                           f"\n  case: {case.describe()}")
    if not worst.ok:
        raise CheckFailure(worst.report() + f"\n  case: {case.describe()}")


def _count(inst: BNInstance) -> int | None:
    if isinstance(inst, TorchModuleInstance):
        t = getattr(inst.module, "num_batches_tracked", None)
        if isinstance(t, torch.Tensor) and t.numel() == 1:
            return int(t.item())
    return None


def eval_per_sample(target: BNTarget, case: Case, device: str, check: Any) -> None:
    """In eval each sample's output depends on that sample alone (one sample, reversed batch); in training it does not."""
    inst = new_instance(target, config(target, case, device))
    gamma, beta = set_case_params(inst, case, device)
    train_some(inst, case, device, steps=2)
    x = case.x
    cmps = []
    for label, xs in (("a batch of one sample (x[0:1])", x[:1]), ("the batch reversed", x[::-1].copy()),
                      ("the full batch", x)):
        cmp, _ = _eval_compare(inst, xs, case, device, gamma, beta, f"eval-mode output for {label}")
        cmps.append(cmp)
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
        cmp.causes = diagnose.forward_train(to_f64(out), other, gamma, beta, case.eps, tol, case.dtype, r64)
        raise CheckFailure(cmp.report() + "\n  training output must depend on the batch (its statistics)"
                           + f"\n  case: {case.describe()}")


def no_tracking(target: BNTarget, case: Case, device: str, check: Any) -> None:
    """``track_running_stats=False``: no buffers, and eval normalises with the batch's own statistics."""
    inst = new_instance(target, config(target, case, device, track_running_stats=False))
    gamma, beta = set_case_params(inst, case, device)
    problems = []
    if inst.get_running() is not None:
        problems.append("running_mean/running_var exist with track_running_stats=False (torch sets them to None)")
    if isinstance(inst, TorchModuleInstance):
        nbt = getattr(inst.module, "num_batches_tracked", None)
        if nbt is not None:
            problems.append("num_batches_tracked exists with track_running_stats=False (torch sets it to None)")
    if problems:
        check.observe(math.inf)
        raise CheckFailure("track_running_stats=False must keep no buffers:\n  " + "\n  ".join(problems)
                           + "\n  likely cause: buffers registered unconditionally; eval then uses stale statistics "
                           "(bug class B9)")
    x = tensor(case.x, case.dtype, device)
    inst.forward(x, training=True)
    out = inst.forward(x, training=False)
    ref, _ = oracle.forward_train(case.x, gamma, beta, case.eps)
    tol = tols.forward_train(case.x, gamma, beta, case.eps, case.dtype)
    cmp = compare(out, ref, tol, "eval-mode output with track_running_stats=False")
    check.observe(cmp.ratio, cmp.max_abs_err)
    if not cmp.ok:
        cmp.causes = ["with no running statistics, eval must use the batch's own statistics, exactly like training"]
        raise CheckFailure(cmp.report() + f"\n  case: {case.describe()}")


def state_dict_roundtrip(target: BNTarget, case: Case, device: str, check: Any) -> None:
    """``state_dict`` of a trained module loaded into a fresh one gives identical running stats and outputs."""
    cfg = config(target, case, device)
    a = new_instance(target, cfg)
    if not isinstance(a, TorchModuleInstance):
        pytest.skip(f"kind {target.kind} has no state_dict")
    set_case_params(a, case, device)
    train_some(a, case, device)
    sd = a.call("state_dict()", lambda: a.module.state_dict())
    missing = [k for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
               if k not in sd and not (k in ("weight", "bias") and not case.affine)]
    if missing:
        check.observe(math.inf)
        raise CheckFailure(f"state_dict() lacks {missing} (has {sorted(sd)}): a saved model loses its running "
                           "statistics, so eval after loading uses the initial ones\n  likely cause: running "
                           "statistics kept as plain attributes instead of register_buffer")
    b = new_instance(target, cfg)
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
    check.observe(float(len(problems)))
    if problems:
        raise CheckFailure("state_dict round trip is not faithful:\n  " + "\n  ".join(problems)
                           + f"\n  case: {case.describe()}")


def mode_toggling(target: BNTarget, case: Case, device: str, check: Any) -> None:
    """train, eval, train, eval, eval, train: each step matches the oracle run through the same sequence."""
    conv = target.convention
    inst = new_instance(target, config(target, case, device))
    gamma, beta = set_case_params(inst, case, device)
    rm, rv = running64(inst, "after construction")
    xs = batches(case, 4)
    plan = [(True, 0), (False, 1), (True, 2), (False, 3), (False, 0), (True, 3), (False, 2)]
    worst: Comparison | None = None
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
            bm, bv = tols.running_update(x, rm, rv, 1.0, conv.unbiased_running_var, case.dtype,
                                         np.zeros_like(rm), np.zeros_like(rv))
            scale = 8.0  # three EMA steps of rounding at most; see tolerances.running_update
            for name, got, exp, bnd in (("running_mean", got_rm, rm, bm), ("running_var", got_rv, rv, bv)):
                c = _cmp(got, exp, bnd * scale + np.abs(exp) * tols.unit_roundoff(case.dtype) * 16,
                         f"{name} before eval step {step + 1} of the sequence", conv.describe())
                check.observe(c.ratio, c.max_abs_err)
                if not c.ok:
                    raise CheckFailure(c.report() + f"\n  sequence so far: {_plan_text(plan[:step + 1])}"
                                       + "\n  likely cause: mode switches change the state (an update in eval, or "
                                       "an update skipped after eval)" + f"\n  case: {case.describe()}")
            out = inst.forward(tensor(x, case.dtype, device), training=False)
            ref = oracle.forward_eval(x, gamma, beta, got_rm, got_rv, case.eps)
            tol = tols.forward_eval(x, gamma, beta, got_rm, got_rv, case.eps, case.dtype)
        cmp = compare(out, ref, tol, f"{mode}-mode output at step {step + 1} of the sequence")
        check.observe(cmp.ratio, cmp.max_abs_err)
        if worst is None or cmp.ratio > worst.ratio:
            worst = cmp
        if not cmp.ok:
            if training:
                cmp.causes = diagnose.forward_train(to_f64(out), x, gamma, beta, case.eps, tol, case.dtype,
                                                    running64(inst, "now"))
            else:
                cmp.causes = diagnose.forward_eval(to_f64(out), x, gamma, beta, got_rm, got_rv, case.eps, tol)
                cmp.causes.append("if an earlier eval step passed: eval caches something (folded scale/shift, "
                                  "statistics) that later training does not invalidate")
            raise CheckFailure(cmp.report() + f"\n  sequence so far: {_plan_text(plan[:step + 1])}"
                               + f"\n  case: {case.describe()}")


def _plan_text(plan: list[tuple[bool, int]]) -> str:
    return " -> ".join(f"{'train' if t else 'eval'}(batch {i})" for t, i in plan)


def single_value_per_channel(target: BNTarget, case: Case, device: str, check: Any) -> None:
    """One value per channel in training: torch raises a clear error; the running statistics are never corrupted."""
    conv = target.convention
    ranks = target.supported_ranks(device) or [2]
    rank = 2 if 2 in ranks else ranks[0]
    c = case.shape[1]
    shape = (1, c) + (1,) * (rank - 2)
    x = to_dtype_values(np.random.default_rng(case.seed).uniform(-3, 3, shape), case.dtype)
    cfg = BNConfig(num_features=c, rank=rank, eps=case.eps, momentum=conv.default_momentum, dtype=case.dtype,
                   device=device)
    inst = new_instance(target, cfg)
    rm0, rv0 = running64(inst, "after construction")
    err: str | None = None
    out: torch.Tensor | None = None
    try:
        out = inst.forward(tensor(x, case.dtype, device), training=True)
    except TargetError as exc:
        if target.watchdog.hung:
            raise
        err = str(exc)
    rm, rv = running64(inst, "after the call")
    problems, causes = [], []
    if err is not None:
        if not (np.array_equal(rm, rm0) and np.array_equal(rv, rv0)):
            problems.append(f"the call raised, but the running statistics changed first: mean {rm0[:3].tolist()} -> "
                            f"{rm[:3].tolist()}, var {rv0[:3].tolist()} -> {rv[:3].tolist()}")
            causes.append("validate the input before updating the buffers (a caught error leaves a corrupted model)")
    else:
        if conv.name == "torch":
            problems.append(f"training on input of shape {shape} (one value per channel) returned without an error")
            causes.append("torch raises ValueError('Expected more than 1 value per channel when training'): the "
                          "variance of one value is 0 and its unbiased estimate m/(m-1) divides by zero (bug class B12)")
        if out is not None and not bool(torch.isfinite(out).all()):
            problems.append("the output has NaN/inf")
        if not (np.all(np.isfinite(rm)) and np.all(np.isfinite(rv))):
            problems.append(f"the running statistics became non-finite: mean {rm[:3].tolist()}, var {rv[:3].tolist()}")
            causes.append("the unbiased factor m/(m-1) with m=1 is 1/0 (bug class B13)")
        elif conv.name != "torch":
            erm, erv, _ = oracle.update_running(rm0, rv0, x, momentum=conv.default_momentum,
                                                momentum_kind=conv.momentum_kind, unbiased=False)
            if not (np.allclose(rm, erm, rtol=1e-5, atol=1e-6) and np.allclose(rv, erv, rtol=1e-5, atol=1e-6)):
                problems.append(f"running statistics after one value per channel: expected mean {erm[:3].tolist()}, "
                                f"var {erv[:3].tolist()}; got {rm[:3].tolist()}, {rv[:3].tolist()}")
    check.observe(float(len(problems)))
    if problems:
        raise CheckFailure(f"one value per channel in training ({conv.name} convention):\n  " + "\n  ".join(problems)
                           + "".join(f"\n  likely cause: {c_}" for c_ in causes)
                           + (f"\n  the target said: {err}" if err else ""))


def eps_honoured(target: BNTarget, case: Case, device: str, check: Any) -> None:
    """The constructor's eps is used in training and in eval: running variances near eps make it visible."""
    inst = new_instance(target, config(target, case, device))
    gamma, beta = set_case_params(inst, case, device)
    c = case.shape[1]
    rng = np.random.default_rng(case.seed + 3)
    rm = to_dtype_values(rng.uniform(-1, 1, c), case.dtype)
    rv = to_dtype_values(case.eps * np.exp(rng.uniform(np.log(1e-2), np.log(1e2), c)), case.dtype)
    inst.set_running(tensor(rm, case.dtype, device), tensor(rv, case.dtype, device))
    cmp, out = _eval_compare(inst, case.x, case, device, gamma, beta,
                             f"eval-mode output with running_var near eps={case.eps:.3g}")
    check.observe(cmp.ratio, cmp.max_abs_err)
    if not cmp.ok:
        rm64, rv64 = running64(inst, "now")
        cmp.causes = cmp.causes + _eps_causes(out, case.x, gamma, beta, rm64, rv64, case.eps, case.dtype)
        raise CheckFailure(cmp.report() + f"\n  case: {case.describe()}")
    xt = to_dtype_values(make_input(rng, case.shape, "tiny_var", case.eps), case.dtype)
    out_t = inst.forward(tensor(xt, case.dtype, device), training=True)
    ref, _ = oracle.forward_train(xt, gamma, beta, case.eps)
    tol = tols.forward_train(xt, gamma, beta, case.eps, case.dtype)
    cmp = compare(out_t, ref, tol, f"training-mode output for batch variances near eps={case.eps:.3g}")
    check.observe(cmp.ratio, cmp.max_abs_err)
    if not cmp.ok:
        mu, var, _ = oracle.batch_stats(xt)
        cmp.causes = _eps_causes(to_f64(out_t), xt, gamma, beta, mu, var, case.eps, case.dtype)
        raise CheckFailure(cmp.report() + f"\n  case: {case.describe()}")


def _eps_causes(out: np.ndarray, x: np.ndarray, gamma: np.ndarray | None, beta: np.ndarray | None,
                mean: np.ndarray, var: np.ndarray, eps: float, dtype: torch.dtype) -> list[str]:
    found = []
    for name, conv in CONVENTIONS.items():
        e = conv.default_eps
        if abs(e - eps) <= 1e-3 * eps:
            continue
        alt = oracle.forward_eval(x, gamma, beta, mean, var, e)
        tol = tols.forward_eval(x, gamma, beta, mean, var, e, dtype)
        from bnverify.compare import matches

        if matches(out, alt, tol):
            found.append(f"the output matches eps={e:g} ({name}'s default) instead of the constructor's "
                         f"eps={eps:.3g}: eps is hard-coded or read from a default (bug class B5)")
            break
    return found


def fold_equals_eval(target: BNTarget, case: Case, device: str, check: Any) -> None:
    """Seed 000's folded transform, and a batch norm folded into the preceding Linear/Conv, equal eval output."""
    inst = new_instance(target, config(target, case, device))
    gamma, beta = set_case_params(inst, case, device)
    train_some(inst, case, device)
    rm, rv = running64(inst, "after training")
    scale, shift = oracle.fold(gamma, beta, rm, rv, case.eps)
    out = inst.forward(tensor(case.x, case.dtype, device), training=False)
    nd = case.x.ndim
    y = oracle.per_channel(scale, nd) * case.x + oracle.per_channel(shift, nd)
    tol = tols.forward_eval(case.x, gamma, beta, rm, rv, case.eps, case.dtype)
    cmp = compare(out, y, tol, "eval-mode output vs the folded transform gamma/sqrt(Var+eps) x + (beta - gamma E[x]/sqrt(Var+eps))")
    check.observe(cmp.ratio, cmp.max_abs_err)
    if not cmp.ok:
        cmp.causes = diagnose.forward_eval(to_f64(out), case.x, gamma, beta, rm, rv, case.eps, tol)
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
        raise CheckFailure(cmp.report() + "\n  likely cause: eval output is not the per-channel affine map of the "
                           "running statistics, so a deployed (folded) model would disagree with the trained one"
                           + f"\n  case: {case.describe()}")


def _layer(u: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float64 Linear (rank 2) or 'same'-padded Conv1d/2d/3d, in torch's (out, in, *k) layout."""
    ut, wt, bt = (torch.from_numpy(np.ascontiguousarray(a)).double() for a in (u, w, b))
    if u.ndim == 2:
        out = torch.nn.functional.linear(ut, wt, bt)
    else:
        conv = {3: torch.nn.functional.conv1d, 4: torch.nn.functional.conv2d, 5: torch.nn.functional.conv3d}[u.ndim]
        out = conv(ut, wt, bt, padding=w.shape[-1] // 2)
    return out.numpy()
