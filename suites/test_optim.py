"""Optimizers (seed 001): every parameter and state entry against the float64 reference, step by step.

Runs against targets of the optimizer family (kind ``torch-optimizer``, a ``torch.optim.Optimizer``
subclass); the reference (``--reference sgd|adam|adamw|rmsprop``, inferred from torch class names) is
``bnverify.reference.optimizers`` under the target's convention (``--convention torch|seed|keras|tf``).
Each check runs the target in lockstep with the reference (``bnverify.optim_check``): same parameters
before each step, same gradients, the reference's own state; tolerances are the running error bounds
of ``bnverify.tolerances`` (optimizer section).  A failure names the step, the parameter, the state
entry, and the convention or the bug form the target matches instead.

The err/tol of every check is the worst error over its running bound.  Two verdicts are exact and
fail without one: a parameter without gradient that moved (``test_missing_gradients``; metric
``changed_without_grad``) and a step counter that is off (metrics ``state_step``, ``expected_step``).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from bnverify.families import optim as fam
from bnverify.optim_check import PROBLEMS, Lockstep, tensors
from bnverify.target import NotSupported

pytestmark = [pytest.mark.bnverify_suite("optim"), pytest.mark.bnverify_tier("quick")]

STEPS = 12


@pytest.fixture
def seed(request):
    return int(request.config.getoption("bn_seed") or 0) % (2**31)


def _scaled(reference: str, hp: dict, scale: float) -> dict:
    """SGD's learning rate follows the problem's curvature; adaptive methods normalise the gradient."""
    return dict(hp, lr=hp["lr"] * scale) if reference == "sgd" else dict(hp)


def _lockstep(target, bn_check, problem, hp, *, dtype=torch.float64, seed=0, label="", groups=None, flags=None,
              extra_params=()):
    ref = target.reference
    params = tensors(problem.init(seed), dtype) + list(extra_params)
    names = list(problem.names) + [f"extra{i}" for i in range(len(extra_params))]
    groups = groups or [{"params": list(range(len(params)))}]
    ctx = (f"optim[{ref}] {label} on {problem.title} ({str(dtype).replace('torch.', '')}"
           f"{', ' + ', '.join(f'{k}={v}' for k, v in flags.items()) if flags else ''})")
    return Lockstep(fam, target, ref, target.convention, params, groups, hp, names, ctx,
                    fam.hypotheses(ref, target.convention, hp), flags=flags or {},
                    recorder=bn_check)


def _run(ls, problem, steps=STEPS, lr_at=None):
    for t in range(steps):
        if lr_at and t in lr_at:
            for gi in range(len(ls.groups)):
                ls.set_lr(gi, ls.lrs[gi] * lr_at[t])
        ls.step(problem.grads(ls.params[:len(problem.names)]) + [torch.zeros_like(p) for p in
                                                                    ls.params[len(problem.names):]])
    return ls


@pytest.mark.parametrize("problem", ["quadratic", "rosenbrock", "mlp"])
def test_trajectory(bn_target, bn_check, seed, problem):
    """k steps of every hyperparameter case (momentum, dampening, Nesterov, betas, amsgrad, centred) in float64."""
    ref = bn_target.reference
    prob = PROBLEMS[problem](seed)
    compared = set()
    for label, hp in fam.CONFIGS[ref]:
        ls = _run(_lockstep(bn_target, bn_check, prob, _scaled(ref, hp, prob.lr_scale), seed=seed, label=label), prob)
        compared |= ls.compared_state
    bn_check.detail("state entries compared", sorted(compared))


def test_param_groups(bn_target, bn_check, seed):
    """Three param groups with different hyperparameters; one with lr=1e-28 must (almost) not move."""
    ref = bn_target.reference
    prob = PROBLEMS["quadratic"](seed)
    base = fam.base_hp(ref)
    other = {"sgd": dict(lr=0.002, momentum=0.5),
             "adam": dict(lr=0.03, betas=(0.8, 0.99), eps=1e-6),
             "adamw": dict(lr=0.03, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.2),
             "rmsprop": dict(lr=0.003, alpha=0.9, eps=1e-6, momentum=0.5)}[ref]
    extra = tensors([np.random.default_rng(seed + 3).standard_normal(3)], torch.float64)
    groups = [{"params": [0]}, dict(other, params=[1]), {"params": [2], "lr": 1e-28}]
    ls = _lockstep(bn_target, bn_check, prob, base, seed=seed, label="param groups", groups=groups,
                   extra_params=extra)
    _run(ls, prob)


def test_weight_decay(bn_target, bn_check, seed):
    """Weight decay with and without momentum: coupled (L2 in the gradient) or decoupled (AdamW), as the reference."""
    ref = bn_target.reference
    prob = PROBLEMS["quadratic"](seed)
    cases = [("weight decay", fam.WEIGHT_DECAY[ref])]
    if ref == "sgd":
        cases.append(("weight decay without momentum", dict(lr=0.01, weight_decay=0.1)))
    for label, hp in cases:
        _run(_lockstep(bn_target, bn_check, prob, hp, seed=seed, label=label), prob)


def test_large_eps(bn_target, bn_check, seed):
    """eps comparable to sqrt(v), where inside/outside the square root and before/after bias correction differ."""
    ref = bn_target.reference
    if ref not in fam.LARGE_EPS:
        pytest.skip(f"the {ref} reference has no eps")
    prob = PROBLEMS["quadratic"](seed)
    for label, hp in fam.CONFIGS[ref][:2]:
        hp = dict(hp, eps=fam.LARGE_EPS[ref])
        _run(_lockstep(bn_target, bn_check, prob, hp, seed=seed, label=f"{label}, eps={hp['eps']:g}"), prob)


def test_lr_change(bn_target, bn_check, seed):
    """param_groups[i]['lr'] changed mid-run (x0.3 at step 5, x3 at step 9) is used from the next step on."""
    ref = bn_target.reference
    prob = PROBLEMS["quadratic"](seed)
    hp = {"sgd": dict(lr=0.01, momentum=0.9), "rmsprop": dict(lr=0.01, alpha=0.99, eps=1e-8, momentum=0.9)}.get(
        ref, fam.base_hp(ref))
    for nesterov in ([False, True] if ref == "sgd" else [False]):
        h = dict(hp, nesterov=True) if nesterov else hp
        label = "lr change" + (", Nesterov" if nesterov else "")
        _run(_lockstep(bn_target, bn_check, prob, h, seed=seed, label=label), prob, lr_at={4: 0.3, 8: 3.0})


def test_missing_gradients(bn_target, bn_check, seed):
    """Parameters whose grad is None are left alone (value and state); a step with no gradients is a no-op;
    a zero-size parameter is accepted (torch's foreach/fused edge case, issue #100701)."""
    ref = bn_target.reference
    prob = PROBLEMS["quadratic"](seed)
    hp = {"sgd": dict(lr=0.01, momentum=0.9, weight_decay=0.1),
          "rmsprop": dict(lr=0.01, alpha=0.99, eps=1e-8, momentum=0.9, weight_decay=0.1)}.get(
        ref, dict(fam.base_hp(ref), weight_decay=0.1))
    empty = torch.zeros(0, dtype=torch.float64, requires_grad=True)
    ls = _lockstep(bn_target, bn_check, prob, hp, seed=seed, label="missing gradients", extra_params=[empty])
    for t in range(STEPS):
        g = prob.grads(ls.params[:2]) + [torch.zeros(0, dtype=torch.float64)]
        if t in (3, 4, 8):
            g[1] = None
            what = ", parameter bias without gradient"
        else:
            what = ""
        if t == 6:
            g, what = [None] * len(g), ", no parameter has a gradient"
        ls.step(g, what=what)


def test_state_dict(bn_target, bn_check, seed):
    """state_dict after 6 steps, loaded into a fresh optimizer over copies of the parameters: both continue in lockstep."""
    ref = bn_target.reference
    prob = PROBLEMS["quadratic"](seed)
    hp = fam.CONFIGS[ref][2 if ref == "sgd" else 0][1] if ref != "rmsprop" else fam.CONFIGS[ref][3][1]
    ls = _lockstep(bn_target, bn_check, prob, hp, seed=seed, label="before state_dict")
    _run(ls, prob, steps=6)
    sd = copy.deepcopy(ls.instance.state_dict())
    fresh = _lockstep(bn_target, bn_check, prob, hp, seed=seed, label="loaded from state_dict")
    with torch.no_grad():
        for p, q in zip(fresh.params, ls.params):
            p.copy_(q)
    fresh.instance.load_state_dict(sd)
    fresh.main, fresh.acc, fresh.hyp, fresh.t = (copy.deepcopy(ls.main), copy.deepcopy(ls.acc),
                                                 copy.deepcopy(ls.hyp), ls.t)
    ls.context = ls.context.replace("before state_dict", "original after state_dict")
    for _ in range(6):
        ls.step(prob.grads(ls.params))
        fresh.step(prob.grads(fresh.params), what=" (fresh optimizer after load_state_dict)")


@pytest.mark.parametrize("problem", ["quadratic", "mlp"])
def test_float32(bn_target, bn_check, seed, problem):
    """float32 parameters, gradients and state, within float32's running error bound."""
    ref = bn_target.reference
    prob = PROBLEMS[problem](seed)
    for label, hp in fam.CONFIGS[ref][:2] + [("weight decay", fam.WEIGHT_DECAY[ref])]:
        _run(_lockstep(bn_target, bn_check, prob, _scaled(ref, hp, prob.lr_scale), dtype=torch.float32, seed=seed,
                       label=label), prob)


@pytest.mark.parametrize("flag", ["foreach", "fused"])
def test_flags(bn_target, bn_check, seed, flag):
    """foreach=True / fused=True, where the target accepts them, follow the same reference."""
    ref = bn_target.reference
    prob = PROBLEMS["quadratic"](seed)
    hp = fam.CONFIGS[ref][1][1]
    try:
        ls = _lockstep(bn_target, bn_check, prob, hp, seed=seed, label=f"{flag}=True", flags={flag: True})
    except NotSupported as exc:
        pytest.skip(str(exc).splitlines()[0])
    _run(ls, prob)
