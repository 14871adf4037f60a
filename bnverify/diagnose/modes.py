"""Likely causes of wrong running statistics, counters, defaults and mode behaviour (suite ``modes``)."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from bnverify import tolerances as tols
from bnverify.compare import matches
from bnverify.conventions import CONVENTIONS, Convention
from bnverify.diagnose.common import Hypothesis, matching, observed
from bnverify.diagnose.conventions import aspect_hint, convention_hint, eps_hint, momentum_hint
from bnverify.reference import batchnorm as oracle
from bnverify.tolerances import Tolerance

# --------------------------------------------------------------------------- running statistics

Life = tuple[list[np.ndarray], list[np.ndarray]]
"""Running means and variances after each training step."""


def _life(xs: list[np.ndarray], rm0: np.ndarray, rv0: np.ndarray, *, momentum: float | None,
          momentum_kind: str, unbiased: bool) -> Life:
    rm, rv, n = np.asarray(rm0, np.float64), np.asarray(rv0, np.float64), 0
    means, vars_ = [], []
    for x in xs:
        rm, rv, n = oracle.update_running(rm, rv, x, momentum=momentum, momentum_kind=momentum_kind,
                                          unbiased=unbiased, num_batches_tracked=n)
        means.append(rm)
        vars_.append(rv)
    return means, vars_


def _life_var_plus_eps(xs: list[np.ndarray], rm0: np.ndarray, rv0: np.ndarray, *, conv: Convention,
                       momentum: float | None, eps: float, factor_outside: bool) -> Life:
    """The running statistics of an update that averages the eps-shifted variance: ``s (var_B + eps)``
    (``factor_outside``) or ``s var_B + eps``, with ``s`` the convention's estimator factor."""
    rm, rv = np.asarray(rm0, np.float64), np.asarray(rv0, np.float64)
    means, vars_ = [], []
    for n, x in enumerate(xs, start=1):
        mean_b, var_b, m = oracle.batch_stats(x)
        s = m / (m - 1) if conv.unbiased_running_var and m > 1 else 1.0
        v = s * (var_b + eps) if factor_outside else s * var_b + eps
        w = 1.0 / n if momentum is None else conv.to_update_fraction(float(momentum))
        rm, rv = (1 - w) * rm + w * mean_b, (1 - w) * rv + w * v
        means.append(rm)
        vars_.append(rv)
    return means, vars_


FROZEN = "the running statistics never change in training: they are not updated (or updated on a copy) (bug class B8)"


def _hypotheses(conv: Convention, xs: list[np.ndarray], rm0: np.ndarray, rv0: np.ndarray,
                momentum: float | None, eps: float | None = None) -> list[tuple[str, Life]]:
    """Other plausible behaviours, as running statistics after each step, with the sentence that names each."""
    hyps: list[tuple[str, Life]] = []
    if momentum is not None:
        for kind in ("update_fraction", "keep_fraction"):
            for unbiased in (True, False):
                if kind == conv.momentum_kind and unbiased == conv.unbiased_running_var:
                    continue
                parts = []
                if unbiased != conv.unbiased_running_var:
                    parts.append("the biased estimator (sigma_B^2, no m/(m-1))" if not unbiased
                                 else "the unbiased estimator m/(m-1) sigma_B^2")
                if kind != conv.momentum_kind:
                    parts.append("momentum as the decay of the old value, r = m r + (1-m) b" if kind == "keep_fraction"
                                 else "momentum as the weight of the new batch, r = (1-m) r + m b")
                text = "running statistics match " + " and ".join(parts)
                text += ": " + aspect_hint(conv, momentum_kind=kind, unbiased=unbiased)
                if kind == conv.momentum_kind or unbiased == conv.unbiased_running_var:  # one aspect: or a known bug
                    if not unbiased and conv.unbiased_running_var:
                        text += "; if not, the running variance must store m/(m-1) sigma_B^2 (seed 000, torch), bug class B1"
                    elif unbiased and not conv.unbiased_running_var:
                        text += f"; if not, the {conv.name} convention stores the biased batch variance, bug class B2"
                    else:
                        text += f"; if not, the {conv.name} convention's momentum is the other way round, bug class B4"
                weight = float(momentum) if kind == "update_fraction" else 1.0 - float(momentum)
                if kind != conv.momentum_kind and weight == 0.0:
                    # read this way, the momentum passed keeps the buffers as they were: that life is also the one
                    # of buffers never updated, and these numbers cannot tell the two apart
                    text = (f"the running statistics did not change with momentum={momentum:g} passed, which two causes "
                            f"explain alike: {text}; or the buffers are never updated (bug class B8); the checks "
                            "that pass other momentum values tell which")
                hyps.append((text, _life(xs, rm0, rv0, momentum=momentum, momentum_kind=kind, unbiased=unbiased)))
        if momentum != conv.default_momentum:
            hyps.append((f"running statistics match the default momentum {conv.default_momentum:g}: the "
                         f"momentum={momentum:g} passed is ignored (hard-coded?)",
                         _life(xs, rm0, rv0, momentum=conv.default_momentum, momentum_kind=conv.momentum_kind,
                               unbiased=conv.unbiased_running_var)))
    else:
        hyps.append((f"running statistics match an exponential average with momentum {conv.default_momentum:g}: "
                     "momentum=None must give the cumulative average 1/num_batches_tracked (bug class B26)",
                     _life(xs, rm0, rv0, momentum=conv.default_momentum, momentum_kind=conv.momentum_kind,
                           unbiased=conv.unbiased_running_var)))
        hyps.append(("running statistics match the cumulative average of the biased batch variances: "
                     + (aspect_hint(conv, unbiased=False) + "; if not, " if conv.unbiased_running_var else "")
                     + "Var[x] = m/(m-1) E_B[sigma_B^2] (seed 000) needs the unbiased factor",
                     _life(xs, rm0, rv0, momentum=None, momentum_kind=conv.momentum_kind, unbiased=False)))
    if eps is not None and eps > 0:
        for outside in (False, True) if conv.unbiased_running_var else (False,):
            where = "m/(m-1) (var_B + eps)" if outside else ("m/(m-1) var_B + eps" if conv.unbiased_running_var
                                                              else "var_B + eps")
            hyps.append((f"running_var matches an average of {where} (eps={eps:.3g}): the running variance accumulates "
                         "var + eps, the quantity under the square root, so every update adds eps and test mode "
                         "adds it again; average the batch variance itself and add eps only when normalising",
                         _life_var_plus_eps(xs, rm0, rv0, conv=conv, momentum=momentum, eps=eps,
                                            factor_outside=outside)))
    frozen = ([rm0] * len(xs), [rv0] * len(xs))
    hyps.append((FROZEN, frozen))
    last = ([oracle.batch_stats(x)[0] for x in xs],
            [oracle.batch_stats(x)[1] * (x.size // x.shape[1]) / max(x.size // x.shape[1] - 1, 1)
             if conv.unbiased_running_var else oracle.batch_stats(x)[1] for x in xs])
    hyps.append(("the running statistics equal the last batch's statistics: momentum treated as 1 (or the "
                 "buffers overwritten instead of averaged)", last))
    return hyps


def _matches_life(means: list[np.ndarray], vars_: list[np.ndarray], life: Life,
                  mean_bounds: list[np.ndarray], var_bounds: list[np.ndarray]) -> bool:
    for i in range(len(means)):
        for got, exp, b in ((means[i], life[0][i], mean_bounds[i]), (vars_[i], life[1][i], var_bounds[i])):
            with np.errstate(invalid="ignore"):
                if not np.all(np.abs(got - exp) <= np.maximum(b, 1e-300) * tols.MATCH_SLACK):
                    return False
    return True


def running_statistics(
    conv: Convention, xs: list[np.ndarray], rm0: np.ndarray, rv0: np.ndarray, momentum: float | None,
    means: list[np.ndarray], vars_: list[np.ndarray], mean_bounds: list[np.ndarray], var_bounds: list[np.ndarray],
    eps: float | None = None,
) -> list[str]:
    """Running statistics after training on ``xs`` from ``rm0``/``rv0``: which other estimator, momentum
    meaning (naming the convention that has it), ignored momentum, frozen or overwritten buffers they match,
    within the check's own per-step bounds; with ``eps``, also the eps-shifted variance accumulated."""
    found = [text for text, life in _hypotheses(conv, xs, rm0, rv0, momentum, eps)
             if _matches_life(means, vars_, life, mean_bounds, var_bounds)]
    if any(t.startswith("the running statistics did not change with momentum=") for t in found):
        found = [t for t in found if t != FROZEN]  # said within the sentence that names both causes
    return found


# --------------------------------------------------------------------------- the counter

def num_batches_tracked(problems: list[str]) -> str:
    """Wrong counts, from the check's problem lines alone: what was observed, never a mechanism.

    The lines hold only the calls whose count was wrong, not the whole sequence, so no counting mistake
    can be tested on them (an eval call with a wrong count fits "eval calls counted" and "never
    incremented" alike); ``counter`` tests them on every call's count."""
    n = len(problems)
    return observed(f"num_batches_tracked is not the number of training-mode forwards in {n} of the counts above")


def counter(counts: list[int], training: list[bool]) -> list[str]:
    """The counting mistakes whose counts equal the observed ones after every call.

    ``counts[0]`` is the count after construction and ``counts[i]`` the count after call ``i``, whose
    mode is ``training[i - 1]``.  Each hypothesis predicts the whole sequence exactly (counts are
    integers, so there is no tolerance); only those that predict it are named."""
    got = np.asarray(counts, dtype=np.int64)
    if got.shape != (len(training) + 1,):
        return []
    trained = np.cumsum([0, *(int(t) for t in training)])
    evals = np.cumsum([0, *(int(not t) for t in training)])
    calls = np.arange(len(training) + 1)
    hyps = [
        ("num_batches_tracked counts every forward call, eval included: its increment is not guarded by the "
         "training flag (only training-mode forwards with track_running_stats=True count)", calls),
        ("num_batches_tracked stays 0: it is never incremented (momentum=None's 1/num_batches_tracked depends on it)",
         np.zeros_like(calls)),
        ("num_batches_tracked counts the eval calls and not the training ones: the mode test is the wrong way round",
         evals),
        ("num_batches_tracked goes up by 2 per training forward: it is incremented twice", 2 * trained),
    ]
    if got[0] != 0:
        hyps.append((f"num_batches_tracked starts at {int(got[0])}, not 0, and then counts the training forwards",
                     got[0] + trained))
    return [text for text, want in hyps if np.array_equal(got, want) and not np.array_equal(want, trained)]


# --------------------------------------------------------------------------- construction and defaults

FRESH_DEFAULTS = observed("a fresh instance is not gamma 1, beta 0, running mean 0, running variance 1")
"""A fresh instance that is not gamma 1, beta 0, running mean 0, running variance 1 (``fresh_defaults``
names the fills that produce its values)."""


def fresh_defaults(gamma: np.ndarray | None, beta: np.ndarray | None, running_mean: np.ndarray | None,
                   running_var: np.ndarray | None) -> list[str]:
    """The fills that give exactly these fresh values (each ``None`` where missing): the running_mean's
    zeros copied into running_var, swapped fills, gamma filled with zeros.  A fill predicts every value,
    so a hypothesis holds only if each value is the fill's."""
    def full(a: np.ndarray | None, value: float) -> bool:
        return a is not None and a.size > 0 and bool(np.all(a == value))

    out = []
    if full(running_var, 0.0) and full(running_mean, 0.0):
        out.append("running_var is all 0, as running_mean: it is filled with zeros like running_mean (the line "
                   "copied); it must start at ones, so that a fresh module is the identity in eval")
    if full(running_mean, 1.0) and full(running_var, 0.0):
        out.append("running_mean is all 1 and running_var all 0: their fills are swapped")
    if full(gamma, 0.0) and full(beta, 1.0):
        out.append("weight (gamma) is all 0 and bias (beta) all 1: their fills are swapped")
    elif full(gamma, 0.0) and (beta is None or full(beta, 0.0)):
        out.append("weight (gamma) is all 0: it is filled with zeros like the bias; it must start at ones")
    return out


def default_eps(measured: float, conv: Convention) -> str:
    """A measured default eps that differs from ``conv``'s: the flag that accepts it (a value within the
    check's tolerance of the measured one), another convention with that default, or a porting slip."""
    names = [c.name for c in CONVENTIONS.values() if abs(measured - c.default_eps) <= tols.DEFAULT_EPS_RTOL * c.default_eps]
    hint = convention_hint(names, conv.name)
    return (f"the default eps is {measured:.3g}: {eps_hint(measured, conv)}" + (f"; or {hint}" if hint else "")
            + "; if not, a wrong default eps when porting (bug class B5)")


def _momentum_choices(weight_new: float, conv: Convention, value: str = "", eps: float | None = None) -> str:
    """What a measured new-batch weight of the default momentum means for the user: the flag that accepts
    it (``--momentum value`` where the caller has found a value that reproduces the target, else
    ``momentum_hint``'s), another convention with that default (and with default eps ``eps``, where the
    caller has measured it), and, if it is not intended, the mistake it reproduces."""
    names = [c.name for c in CONVENTIONS.values()
             if abs(c.to_update_fraction(c.default_momentum) - weight_new) <= tols.DEFAULT_MOMENTUM_ATOL
             and (eps is None or abs(c.default_eps - eps) <= tols.DEFAULT_EPS_RTOL * eps)]
    hint = convention_hint(names, conv.name)
    meaning = "weight of the new batch" if conv.momentum_kind == "update_fraction" else "decay of the old value"
    flag = (f"if that is intended, pass --momentum {value} (momentum as the {meaning})" if value
            else momentum_hint(weight_new, conv))
    parts = [flag] if flag else []
    if hint:
        parts.append(("or " if flag else "") + hint)
    inverted = 1.0 - conv.to_update_fraction(conv.default_momentum)
    if abs(weight_new - inverted) <= tols.DEFAULT_MOMENTUM_ATOL:
        other = "decay of the old value" if conv.momentum_kind == "update_fraction" else "weight of the new batch"
        parts.append(f"if not, {conv.name}'s default {conv.default_momentum:g} is read as the {other}, the other "
                     "way round (bug class B4): then the checks that pass momentum explicitly fail too")
    else:
        parts.append(f"if not, the default momentum is not {conv.name}'s {conv.default_momentum:g}")
    return "; ".join(parts)


def default_momentum(weight_new: float, conv: Convention) -> str:
    """A measured new-batch weight of the default momentum that differs from ``conv``'s (a weight of 0:
    the statistics did not move, which no momentum meaning or flag makes correct)."""
    if abs(weight_new) <= tols.DEFAULT_MOMENTUM_ATOL:
        return (f"the running statistics did not change in the first training step (new-batch weight {weight_new:.3g}): "
                "they are not updated, or updated on a copy (bug class B8); no --momentum makes that correct")
    names = [c.name for c in CONVENTIONS.values()
             if abs(c.to_update_fraction(c.default_momentum) - weight_new) <= tols.DEFAULT_MOMENTUM_ATOL]
    return (f"a new-batch weight of {weight_new:.3g}" + (f" (the default of {', '.join(names)})" if names else "")
            + f": {_momentum_choices(weight_new, conv)}")


BN_PARAM_DIGITS = 10
"""Decimals tried for a default momentum fitted to ``bn_param``'s statistics (``bn_param_defaults``): the
fewest that reproduce them are named, so a round default reads as written (0.1) and any other as exact as
the ``--momentum`` flag that accepts it must be (that check's bound is float64 rounding)."""


def bn_param_defaults(conv: Convention, x: np.ndarray, running_mean: np.ndarray, running_var: np.ndarray) -> list[str]:
    """Running statistics after one training step on ``x`` from a ``bn_param`` that holds no momentum and
    no statistics (numpy-cs231n, ``test_bn_param_defaults``), where ``conv`` expects its default momentum
    applied to zeros.

    Hypotheses, each simulated and named only if both buffers lie within the check's own bound
    (``tolerances.running_update`` for the weight and start it assumes, times ``MATCH_SLACK``):

    * another default momentum: the new-batch weight fitted to both buffers by least squares, turned
      into a momentum in ``conv``'s meaning and rounded to the fewest decimals (up to
      ``BN_PARAM_DIGITS``) whose simulation reproduces them: the ``--momentum`` value named is one
      that accepts the target;
    * absent statistics that start at running_var 1 (torch's initial value) instead of the course
      template's ``np.zeros(D)``, with the default momentum or a fitted one.

    The check's output comparison has passed with ``conv``'s default eps before this runs, so a
    convention named for the momentum must have that eps too.
    """
    mu, var, m = oracle.batch_stats(x)
    v = var * (m / (m - 1) if conv.unbiased_running_var and m > 1 else 1.0)
    rm, rv = np.asarray(running_mean, np.float64), np.asarray(running_var, np.float64)
    if rm.shape != mu.shape or rv.shape != v.shape or not (np.all(np.isfinite(rm)) and np.all(np.isfinite(rv))):
        return []
    w_exp = conv.to_update_fraction(conv.default_momentum)
    zeros = np.zeros_like(mu)

    def reproduces(w: float, rv0: np.ndarray) -> bool:
        bm, bv = tols.running_update(x, zeros, rv0, w, conv.unbiased_running_var, torch.float64, zeros, zeros)
        sm, sv = w * mu, (1 - w) * rv0 + w * v
        return bool(np.all(np.abs(rm - sm) <= bm * tols.MATCH_SLACK) and np.all(np.abs(rv - sv) <= bv * tols.MATCH_SLACK))

    def fitted(rv0: np.ndarray) -> float | None:
        """The fewest-decimals momentum, in ``conv``'s meaning, whose update from ``rv0`` reproduces both buffers."""
        a, b = np.concatenate([mu, v - rv0]), np.concatenate([rm, rv - rv0])
        if not np.dot(a, a) > 0:
            return None
        raw = conv.from_update_fraction(float(np.dot(a, b) / np.dot(a, a)))
        for digits in range(1, BN_PARAM_DIGITS + 1):
            mom = round(raw, digits)
            if 0.0 <= mom <= 1.0 and conv.to_update_fraction(mom) != w_exp and reproduces(conv.to_update_fraction(mom), rv0):
                return mom
        return None

    mom = fitted(zeros)
    if mom is not None:
        w = conv.to_update_fraction(mom)
        return [f"the running statistics match a default momentum of {mom!r} (new-batch weight {w:.4g}), not the "
                f"{conv.name} default {conv.default_momentum:g} (weight {w_exp:.4g}): {_momentum_choices(w, conv, repr(mom), conv.default_eps)}"]
    ones = np.ones_like(mu)
    start = ("the running statistics match absent statistics that start at running_mean 0, running_var 1 (torch's "
             "initial values), not the course template's np.zeros(D)")
    if reproduces(w_exp, ones):
        return [start]
    mom = fitted(ones)
    if mom is not None:
        return [f"{start}, and a default momentum of {mom!r} (new-batch weight {conv.to_update_fraction(mom):.4g})"]
    return []


def hardcoded_eps(out: np.ndarray, x: np.ndarray, gamma: np.ndarray | None, beta: np.ndarray | None,
                  mean: np.ndarray, var: np.ndarray, eps: float, dtype: torch.dtype) -> list[str]:
    """An output normalised with some convention's default eps instead of the constructor's."""
    found = []
    for name, conv in CONVENTIONS.items():
        e = conv.default_eps
        if abs(e - eps) <= tols.DEFAULT_EPS_RTOL * eps:
            continue
        alt = oracle.forward_eval(x, gamma, beta, mean, var, e)
        tol = tols.forward_eval(x, gamma, beta, mean, var, e, dtype)
        if matches(out, alt, tol):
            found.append(f"the output matches eps={e:g} ({name}'s default) instead of the constructor's "
                         f"eps={eps:.3g}: eps is hard-coded or read from a default (bug class B5)")
            break
    return found


STATE_DICT_BUFFERS = observed("state_dict() holds no running_mean/running_var")
"""``state_dict()`` lacks the running statistics (``state_dict_buffers`` looks where the module keeps them)."""


def state_dict_buffers(module: torch.nn.Module, state: dict[str, object]) -> list[str]:
    """Where a module whose ``state_dict()`` lacks its running statistics keeps them, found by looking:
    tensors set as plain attributes (not in ``_buffers``), or buffers registered with ``persistent=False``."""
    missing = [n for n in ("running_mean", "running_var") if not any(k.rsplit(".", 1)[-1] == n for k in state)]
    plain, transient = [], []
    for path, sub in module.named_modules():
        where = f"{path}.{{}}" if path else "{}"
        for name in missing:
            if name in sub._buffers and sub._buffers[name] is not None:
                if name in getattr(sub, "_non_persistent_buffers_set", set()):
                    transient.append(where.format(name))
            elif isinstance(sub.__dict__.get(name), torch.Tensor):
                plain.append(where.format(name))
    out = []
    if plain:
        out.append(f"{' and '.join(plain)} {'is a plain tensor attribute' if len(plain) == 1 else 'are plain tensor attributes'}"
                   ", not registered buffers, so state_dict() leaves them out: use register_buffer")
    if transient:
        out.append(f"{' and '.join(transient)} {'is' if len(transient) == 1 else 'are'} registered with persistent=False, "
                   "so state_dict() leaves them out")
    return out


NO_TRACKING_BUFFERS = observed("running statistics exist with track_running_stats=False (bug class B9)")
"""``track_running_stats=False`` still has buffers: what the check sees is the cause itself."""

NO_TRACKING_EVAL = observed("with track_running_stats=False the eval output is neither the training output nor "
                            "normalisation with the batch's own statistics")
"""``track_running_stats=False`` and an eval output that is not the training one (``no_tracking_eval`` tests
what it does instead)."""


def no_tracking_eval(out: np.ndarray, x: np.ndarray, gamma: np.ndarray | None, beta: np.ndarray | None, eps: float,
                     tol: Tolerance) -> list[str]:
    """An eval output with ``track_running_stats=False`` that is not the batch-statistics one: does it
    equal normalisation with a fresh module's statistics (mean 0, variance 1), the input itself, or the
    affine step without normalisation?"""
    g, b = oracle.affine(x, gamma, beta)
    hyps: list[Hypothesis] = [
        ("the eval output matches normalisation with mean 0 and variance 1, a fresh module's running statistics: "
         "with track_running_stats=False eval must use the batch's own statistics, as training does",
         lambda: g * x / np.sqrt(1.0 + eps) + b),
        ("the eval output is the input unchanged: eval returns x when there are no running statistics",
         lambda: x),
        ("the eval output matches gamma * x + beta: eval applies the affine step without normalising",
         lambda: g * x + b),
    ]
    return matching(out, tol, hyps)


# --------------------------------------------------------------------------- train/eval

EVAL_UPDATES = observed("the running statistics changed in eval mode (bug class B10)")
"""Eval changed the running statistics or the counter (``eval_updates`` tests for a training update per eval call)."""


def _updated(conv: Convention, momentum: float | None, xs: list[np.ndarray], rm: np.ndarray, rv: np.ndarray,
             dtype: torch.dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``rm``/``rv`` after a training update on each batch of ``xs`` in ``conv``, with their bounds."""
    rm, rv = np.asarray(rm, np.float64), np.asarray(rv, np.float64)
    bm, bv = np.zeros_like(rm), np.zeros_like(rv)
    w = conv.to_update_fraction(conv.default_momentum if momentum is None else float(momentum))
    for x in xs:
        bm, bv = tols.running_update(x, rm, rv, w, conv.unbiased_running_var, dtype, bm, bv)
        rm, rv, _ = oracle.update_running(rm, rv, x, momentum=conv.from_update_fraction(w),
                                          momentum_kind=conv.momentum_kind, unbiased=conv.unbiased_running_var)
    return rm, rv, bm, bv


def _within(got: np.ndarray, want: np.ndarray, bound: np.ndarray) -> bool:
    with np.errstate(invalid="ignore"):
        return bool(np.all(np.abs(np.asarray(got, np.float64) - want) <= np.maximum(bound, 1e-300) * tols.MATCH_SLACK))


def eval_updates(conv: Convention, momentum: float | None, running_mean: np.ndarray, running_var: np.ndarray,
                 xs: list[np.ndarray], mean_after: np.ndarray, var_after: np.ndarray, dtype: torch.dtype) -> list[str]:
    """Running statistics that changed during eval calls on ``xs``: do they equal one training-mode update
    per eval call (in ``conv``, with ``momentum``), within ``tolerances.running_update``'s bounds?"""
    for k in range(len(xs), 0, -1):
        rm, rv, bm, bv = _updated(conv, momentum, xs[:k], running_mean, running_var, dtype)
        if _within(mean_after, rm, bm) and _within(var_after, rv, bv):
            which = "every eval call" if k == len(xs) else f"the first {k} of the {len(xs)} eval calls"
            return [f"the running statistics after eval match a training-mode update on {which}: the update is not "
                    "guarded by the training flag (running statistics drift at inference, bug class B10)"]
    return []


MODE_SWITCH_STATE = observed("the running statistics before this eval step differ from those of the same "
                             "train/eval sequence run on the reference")
"""The running statistics before an eval step differ from the oracle run through the same sequence
(``mode_switch`` simulates an update in eval and an update skipped after eval)."""


def mode_switch(conv: Convention, momentum: float | None, plan: list[tuple[bool, int]], xs: list[np.ndarray],
                running_mean: np.ndarray, running_var: np.ndarray, step: int, mean_now: np.ndarray,
                var_now: np.ndarray, dtype: torch.dtype) -> list[str]:
    """Running statistics read before eval step ``step`` (0-based) of ``plan`` (``(training, batch index)``
    pairs over ``xs``, started from ``running_mean``/``running_var``) that differ from the oracle's: do
    they equal the same sequence with every eval call updating as training does, or with each training
    step that follows an eval skipped?  Matched within ``tolerances.toggled_running``'s bounds, the
    check's own."""
    x_now = xs[plan[step][1]]
    variants = (
        ("the running statistics match the sequence with an update on every eval call too: eval updates them "
         "(bug class B10)", lambda i, t: True),
        ("the running statistics match the sequence with each training step that follows an eval step skipped: "
         "switching back to training loses an update", lambda i, t: t and not (i > 0 and not plan[i - 1][0])),
    )
    out = []
    for text, updates in variants:
        rm, rv = np.asarray(running_mean, np.float64), np.asarray(running_var, np.float64)
        for i, (training, b) in enumerate(plan[:step]):
            if updates(i, training):
                rm, rv, _bm, _bv = _updated(conv, momentum, [xs[b]], rm, rv, dtype)
        bm, bv = tols.toggled_running(x_now, rm, rv, conv.unbiased_running_var, dtype)
        if _within(mean_now, rm, bm) and _within(var_now, rv, bv):
            out.append(text)
    return out


EVAL_CACHE = observed("the eval output is wrong later in a train/eval sequence")
"""An eval output wrong later in a train/eval sequence (``eval_cache`` tests earlier statistics)."""


def eval_cache(out: np.ndarray, x: np.ndarray, gamma: np.ndarray | None, beta: np.ndarray | None,
               earlier: list[tuple[int, np.ndarray, np.ndarray]], eps: float, tol: Tolerance) -> list[str]:
    """An eval output wrong later in a train/eval sequence: does it equal the eval output with the running
    statistics held at an earlier eval step (``earlier``: ``(step number, running_mean, running_var)``)?"""
    def with_stats(rm: np.ndarray, rv: np.ndarray) -> Callable[[], np.ndarray]:
        return lambda: oracle.forward_eval(x, gamma, beta, rm, rv, eps)

    for step, rm, rv in earlier:
        if matching(out, tol, [("", with_stats(rm, rv))]):
            return [f"the eval output matches the running statistics held at eval step {step}: eval caches something "
                    "(folded scale/shift, statistics) that later training does not invalidate"]
    return []


def eval_updates_output(conv: Convention, momentum: float | None, out: np.ndarray, x: np.ndarray,
                        gamma: np.ndarray | None, beta: np.ndarray | None, running_mean: np.ndarray,
                        running_var: np.ndarray, eps: float, dtype: torch.dtype) -> list[str]:
    """A wrong eval output: does it equal normalisation with the running statistics after a training-mode
    update on this very batch (the eval call updates them first, then normalises with them)?

    The bound is the eval bound for the updated statistics plus what their own error
    (``tolerances.running_update``) moves the output by: ``|g|/s dm + |g (x - m)|/(2 s^3) dv``."""
    rm, rv, bm, bv = _updated(conv, momentum, [x], running_mean, running_var, dtype)
    if not (np.all(np.isfinite(rm)) and np.all(np.isfinite(rv)) and np.all(rv + eps > 0)):
        return []
    nd = x.ndim
    g, _ = oracle.affine(x, gamma, beta)
    s = np.sqrt(oracle.per_channel(rv, nd) + eps)
    moved = (np.abs(g) / s * oracle.per_channel(bm, nd)
             + np.abs(g * (x - oracle.per_channel(rm, nd))) / (2 * s**3) * oracle.per_channel(bv, nd))
    base = tols.forward_eval(x, gamma, beta, rm, rv, eps, dtype)
    tol = Tolerance(base.bound + moved, base.explanation)
    return matching(out, tol, [("the eval output matches normalisation with the running statistics updated on this "
                                "batch first: eval updates them before using them (the update is not guarded by the "
                                "training flag, bug class B10)",
                                lambda: oracle.forward_eval(x, gamma, beta, rm, rv, eps))])


SINGLE_VALUE_CORRUPTS = "validate the input before updating the buffers (a caught error leaves a corrupted model)"
"""One value per channel raised, but only after the buffers changed: observed in that order by the check."""

SINGLE_VALUE_NO_ERROR = ("torch raises ValueError('Expected more than 1 value per channel when training'): the "
                         "variance of one value is 0 and its unbiased estimate m/(m-1) divides by zero (bug class B12)")
"""One value per channel returned without an error under the torch convention: what torch does instead."""

SINGLE_VALUE_NONFINITE = observed("one value per channel made the running statistics non-finite")
"""One value per channel made the running statistics non-finite (``single_value_nonfinite`` tests the
unbiased factor)."""


def single_value_nonfinite(conv: Convention, momentum: float, x: np.ndarray, running_mean0: np.ndarray,
                           running_var0: np.ndarray, running_mean: np.ndarray, running_var: np.ndarray) -> list[str]:
    """Running statistics after a training step on one value per channel: does the update with the unbiased
    factor m/(m-1) at m = 1 reproduce them?  It leaves the running mean's update as it should be and
    makes running_var non-finite in every channel (0 * 1/0, or a rounding residue / 0)."""
    w = conv.to_update_fraction(float(momentum))
    rm, _, _ = oracle.update_running(running_mean0, running_var0, x, momentum=momentum,
                                     momentum_kind=conv.momentum_kind, unbiased=False)
    if not (w > 0 and np.all(np.isfinite(running_mean)) and not np.any(np.isfinite(running_var))):
        return []
    if not np.allclose(running_mean, rm, rtol=tols.SINGLE_VALUE_RTOL, atol=tols.SINGLE_VALUE_ATOL):
        return []
    return ["the running mean took its update and running_var is non-finite in every channel, as the unbiased "
            "factor m/(m-1) with m=1 (1/0) makes it (bug class B13)"]


FOLDED_LAYER = observed("for the layer's output the eval output is not the folded per-channel affine map of the "
                        "running statistics that it is for the check's own input")
"""Batch norm folded into the preceding Linear/Conv disagrees with the eval output (``folded_layer`` tests
the eval-mode hypotheses on the layer's output)."""


def folded_layer(out: np.ndarray, z: np.ndarray, gamma: np.ndarray | None, beta: np.ndarray | None,
                 running_mean: np.ndarray, running_var: np.ndarray, eps: float, dtype: torch.dtype) -> list[str]:
    """The eval output for the preceding layer's output ``z``: the eval-mode mistakes that reproduce it
    (``diagnose.forward.eval_output`` within the eval bound of ``z``)."""
    from bnverify.diagnose.forward import eval_output

    tol = tols.forward_eval(z, gamma, beta, running_mean, running_var, eps, dtype)
    return eval_output(out, z, gamma, beta, running_mean, running_var, eps, tol)


# --------------------------------------------------------------------------- what chooses the mode; graph in buffers

GRAD_MODE_DESIGN = (
    "design deviation: the module chooses training or inference from torch.is_grad_enabled(), not from "
    ".train()/.eval() (the textbook pattern 'if not torch.is_grad_enabled(): use the moving averages'): under "
    "torch.no_grad() a module in .train() does not train, and a validation loop run without no_grad() in "
    ".eval() updates the running statistics.  Accepted as a design; checks that need .eval() with autograd "
    "on (eval-mode backward) are not run"
)
"""``probe_mode_source`` found it: each call's output is classified by the statistics that reproduce it."""

MODE_SOURCE = {
    "always-train": "the module normalises with the batch statistics whatever .eval() says (is self.training read?)",
    "always-eval": "the module normalises with the running statistics even in .train() (is self.training read the "
                   "right way round?)",
    "unknown": observed("neither .train()/.eval() nor grad mode explains which statistics the module normalises with"),
}
"""By what ``probe_mode_source`` found, which classifies each output by the statistics that reproduce it."""

GRAPH_IN_BUFFERS = (
    "the running statistics are assigned from batch statistics that are still attached to the graph "
    "(running_mean = (1-m) * running_mean + m * mean without .detach() or torch.no_grad()): every step's graph is "
    "kept alive through the buffers, memory grows with each step, and a second backward through them fails"
)
"""A buffer with ``requires_grad`` or a ``grad_fn``: the graph attached to it is what the check observed."""
