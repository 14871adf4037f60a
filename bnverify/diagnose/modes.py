"""Likely causes of wrong running statistics, counters, defaults and mode behaviour (suite ``modes``)."""

from __future__ import annotations

import numpy as np
import torch

from bnverify import tolerances as tols
from bnverify.compare import matches
from bnverify.conventions import CONVENTIONS, Convention
from bnverify.diagnose.conventions import aspect_hint, convention_hint, eps_hint, momentum_hint
from bnverify.reference import batchnorm as oracle

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
                hyps.append((text, _life(xs, rm0, rv0, momentum=momentum, momentum_kind=kind, unbiased=unbiased)))
        if momentum != conv.default_momentum:
            hyps.append((f"running statistics match the default momentum {conv.default_momentum:g}: the constructor's "
                         f"momentum={momentum:g} is ignored (hard-coded?)",
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
    hyps.append(("the running statistics never change in training: they are not updated (or updated on a copy) "
                 "(bug class B8)", frozen))
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
    return [text for text, life in _hypotheses(conv, xs, rm0, rv0, momentum, eps)
            if _matches_life(means, vars_, life, mean_bounds, var_bounds)]


def num_batches_tracked(problems: list[str]) -> str:
    """Wrong counts: eval calls counted, or no (or a wrong) increment."""
    if any("(eval)" in p for p in problems):
        return "it counts eval calls too: only training-mode forwards with track_running_stats=True count"
    return "it is never (or wrongly) incremented: momentum=None's 1/num_batches_tracked depends on it"


# --------------------------------------------------------------------------- construction and defaults

FRESH_DEFAULTS = "buffers/parameters initialised with torch.empty or swapped fills"
"""A fresh instance that is not gamma 1, beta 0, running mean 0, running variance 1."""


def default_eps(measured: float, conv: Convention) -> str:
    """A measured default eps that differs from ``conv``'s: another convention's, or a porting slip."""
    names = [c.name for c in CONVENTIONS.values() if abs(measured - c.default_eps) <= tols.DEFAULT_EPS_RTOL * c.default_eps]
    hint = convention_hint(names, conv.name)
    return (f"the default eps is {measured:.3g}: {eps_hint(measured, conv)}" + (f"; or {hint}" if hint else "")
            + "; if not, a wrong default eps when porting (bug class B5)")


def default_momentum(weight_new: float, conv: Convention) -> str:
    """A measured new-batch weight of the default momentum that differs from ``conv``'s."""
    names = [c.name for c in CONVENTIONS.values()
             if abs(c.to_update_fraction(c.default_momentum) - weight_new) <= tols.DEFAULT_MOMENTUM_ATOL]
    hint = convention_hint(names, conv.name)
    flag = momentum_hint(weight_new, conv)
    return (f"a new-batch weight of {weight_new:.3g}" + (f" (the default of {', '.join(names)})" if names else "")
            + (f": {flag}" if flag else "") + (f"; or {hint}" if hint else "")
            + "; if not, the momentum default is inverted or mistyped (bug class B4/B6)")


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


STATE_DICT_BUFFERS = "running statistics kept as plain attributes instead of register_buffer"
"""``state_dict()`` lacks the running statistics."""

NO_TRACKING_BUFFERS = "buffers registered unconditionally; eval then uses stale statistics (bug class B9)"
"""``track_running_stats=False`` still has buffers."""

NO_TRACKING_EVAL = "with no running statistics, eval must use the batch's own statistics, exactly like training"
"""``track_running_stats=False`` and an eval output that is not the training one."""

# --------------------------------------------------------------------------- train/eval

EVAL_UPDATES = ("the update is not guarded by `if self.training` (running statistics drift at inference, "
                "bug class B10)")
"""Eval changed the running statistics or the counter."""

MODE_SWITCH_STATE = "mode switches change the state (an update in eval, or an update skipped after eval)"
"""The running statistics before an eval step differ from the oracle run through the same sequence."""

EVAL_CACHE = ("if an earlier eval step passed: eval caches something (folded scale/shift, statistics) that later "
              "training does not invalidate")
"""An eval output wrong later in a train/eval sequence."""

SINGLE_VALUE_CORRUPTS = "validate the input before updating the buffers (a caught error leaves a corrupted model)"
"""One value per channel raised, but only after the buffers changed."""

SINGLE_VALUE_NO_ERROR = ("torch raises ValueError('Expected more than 1 value per channel when training'): the "
                         "variance of one value is 0 and its unbiased estimate m/(m-1) divides by zero (bug class B12)")
"""One value per channel returned without an error under the torch convention."""

SINGLE_VALUE_NONFINITE = "the unbiased factor m/(m-1) with m=1 is 1/0 (bug class B13)"
"""One value per channel made the running statistics non-finite."""

FOLDED_LAYER = ("eval output is not the per-channel affine map of the running statistics, so a deployed (folded) "
                "model would disagree with the trained one")
"""Batch norm folded into the preceding Linear/Conv disagrees with the eval output."""


# --------------------------------------------------------------------------- what chooses the mode; graph in buffers

GRAD_MODE_DESIGN = (
    "design deviation: the module chooses training or inference from torch.is_grad_enabled(), not from "
    ".train()/.eval() (the textbook pattern 'if not torch.is_grad_enabled(): use the moving averages'): under "
    "torch.no_grad() a module in .train() does not train, and a validation loop run without no_grad() in "
    ".eval() updates the running statistics.  Accepted as a design; checks that need .eval() with autograd "
    "on (eval-mode backward) are not run"
)
MODE_SOURCE = {
    "always-train": "the module normalises with the batch statistics whatever .eval() says (is self.training read?)",
    "always-eval": "the module normalises with the running statistics even in .train() (is self.training read the "
                   "right way round?)",
    "unknown": "neither .train()/.eval() nor grad mode explains which statistics the module normalises with",
}
GRAPH_IN_BUFFERS = (
    "the running statistics are assigned from batch statistics that are still attached to the graph "
    "(running_mean = (1-m) * running_mean + m * mean without .detach() or torch.no_grad()): every step's graph is "
    "kept alive through the buffers, memory grows with each step, and a second backward through them fails"
)
