"""Lockstep comparison of a torch optimizer with its float64 reference, and the problems it runs on.

``Lockstep`` drives one constructed optimizer (``bnverify.families.optim.OptimInstance``) step by
step.  Before each step it computes the gradients (a problem's, or none for some parameters),
hands the target exactly those, and evaluates the reference from the target's own parameters
(so parameter errors never feed back) with the reference's own state.  After the step it compares
every parameter and every state entry it can name with the reference, within the running bound of
``bnverify.tolerances`` (optimizer section).  Alternative hypotheses (other conventions, single
aspects flipped, known bug forms) run beside it on the same inputs; when the target leaves the
reference, those it still matches become the failure's likely cause.

A comparison within the running bound is an error over its tolerance (``observe``, the err/tol of
the summary).  Two verdicts are exact instead, and fail with no err/tol (``recorder.not_a_ratio``):
a parameter without gradient that moved (``changed_without_grad``, elements) and a step counter that
is off (``state_step`` against ``expected_step``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch

from bnverify import tolerances as tols
from bnverify.compare import CheckFailure, compare, to_f64
from bnverify.reference import optimizers as ref
from bnverify.target import TargetError
from bnverify.tolerances import Tolerance

NONNEGATIVE = {"exp_avg_sq", "max_exp_avg_sq", "square_avg"}
"""State entries that are non-negative by construction (never moved below 0 when bounding)."""

STATE_NAMES = {
    "momentum_buffer": ("momentum_buffer", "velocity", "v", "momentum"),
    "exp_avg": ("exp_avg", "m", "first_moment"),
    "exp_avg_sq": ("exp_avg_sq", "second_moment"),
    "max_exp_avg_sq": ("max_exp_avg_sq",),
    "square_avg": ("square_avg", "cache"),
    "grad_avg": ("grad_avg",),
    "step": ("step", "t"),
}
"""Reference state field -> the keys a target may store it under (torch's first)."""


# --------------------------------------------------------------------------- problems

class Problem(NamedTuple):
    """A loss over a list of parameters: initial float64 values and the gradient at given tensors."""

    name: str
    title: str
    init: Callable[[int], list[np.ndarray]]
    grads: Callable[[Sequence[torch.Tensor]], list[torch.Tensor]]
    lr_scale: float = 1.0
    """Multiplies SGD's learning rate (curvature of the problem), so that k steps stay bounded."""
    names: tuple[str, ...] = ()


def _quadratic(seed: int) -> Problem:
    """Seed 001's elongated contours: ``0.5 sum h (theta - c)^2``, h log-spaced over [1, 100] per element."""
    rng = np.random.default_rng(seed)
    shapes = [(4, 3), (3,)]
    hs = [np.exp(rng.uniform(0, math.log(100), s)) for s in shapes]
    cs = [rng.standard_normal(s) for s in shapes]

    def init(s: int) -> list[np.ndarray]:
        r = np.random.default_rng(s + 17)
        return [c + r.standard_normal(c.shape) for c in cs]

    def grads(ps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [torch.from_numpy(h * (to_f64(p) - c)).to(p.dtype) for p, h, c in zip(ps, hs, cs)]

    return Problem("quadratic", "the ill-conditioned quadratic (curvatures 1..100)", init, grads, 1.0,
                   ("weight", "bias"))


def _rosenbrock(seed: int) -> Problem:
    """Rosenbrock ``(1 - x)^2 + 100 (y - x^2)^2`` from near (-1.5, 2)."""

    def init(s: int) -> list[np.ndarray]:
        r = np.random.default_rng(s)
        return [np.array([-1.5, 2.0]) + 0.05 * r.standard_normal(2)]

    def grads(ps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        x, y = to_f64(ps[0])
        g = np.array([-2 * (1 - x) - 400 * x * (y - x * x), 200 * (y - x * x)])
        return [torch.from_numpy(g).to(ps[0].dtype)]

    return Problem("rosenbrock", "Rosenbrock's function", init, grads, 0.01, ("xy",))


def _mlp(seed: int) -> Problem:
    """A 2-3-1 sigmoid MLP on 16 fixed points, mean squared error (torch's optimizer tests' model)."""
    rng = np.random.default_rng(seed + 5)
    x = rng.standard_normal((16, 2))
    y = (x[:, :1] * x[:, 1:] > 0).astype(np.float64)

    def init(s: int) -> list[np.ndarray]:
        r = np.random.default_rng(s + 29)
        return [r.standard_normal((3, 2)), 0.1 * r.standard_normal(3), r.standard_normal((1, 3)),
                0.1 * r.standard_normal(1)]

    def grads(ps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        leaves = [p.detach().clone().requires_grad_(True) for p in ps]
        w1, b1, w2, b2 = leaves
        xt, yt = torch.from_numpy(x).to(ps[0].dtype), torch.from_numpy(y).to(ps[0].dtype)
        out = torch.sigmoid(torch.sigmoid(xt @ w1.T + b1) @ w2.T + b2)
        loss = ((out - yt) ** 2).mean()
        return [g.detach() for g in torch.autograd.grad(loss, leaves)]

    return Problem("mlp", "a small MLP (2-3-1, sigmoid)", init, grads, 10.0, ("w1", "b1", "w2", "b2"))


PROBLEMS: dict[str, Callable[[int], Problem]] = {"quadratic": _quadratic, "rosenbrock": _rosenbrock, "mlp": _mlp}


# --------------------------------------------------------------------------- hypotheses

@dataclass(frozen=True)
class Hypothesis:
    """A way the target might compute instead: reference keywords overridden, and what to say."""

    label: str
    overrides: dict[str, Any]
    hint: str
    reference: str | None = None
    """Another reference (``adamw`` for an Adam that decouples its decay)."""
    lr_frozen: bool = False
    """The learning rate of construction, whatever ``param_groups`` says later."""


# --------------------------------------------------------------------------- lockstep

@dataclass
class _Track:
    """One reference (the expected one or a hypothesis) following one parameter."""

    state: Any
    matching: bool = True


@dataclass
class StepReport:
    worst: float = 0.0
    max_abs_err: float = 0.0


@dataclass
class Lockstep:
    """Run a target optimizer and its reference (plus hypotheses) on the same inputs, step by step.

    ``groups``: one dict per param group with ``params`` (indices into ``params``) and the group's
    hyperparameters in torch's names; ``defaults`` go to the constructor as keywords.
    """

    family: Any
    target: Any
    reference: str
    convention: Any
    params: list[torch.Tensor]
    groups: list[dict[str, Any]]
    defaults: dict[str, Any]
    names: list[str]
    context: str
    hypotheses: list[Hypothesis] = field(default_factory=list)
    flags: dict[str, Any] = field(default_factory=dict)
    observe: Callable[[float, float], None] | None = None
    raise_on_mismatch: bool = True
    recorder: Any = None
    """A check's recorder (``bn_check``): its ``observe`` takes the ratios (unless ``observe`` is given),
    its ``metric`` and ``not_a_ratio`` the exact verdicts."""

    def __post_init__(self) -> None:
        self.instance = self.target.build(self.params, self.groups, self.defaults, self.flags)
        self.t = 0
        self.lrs = [g.get("lr", self.defaults.get("lr")) for g in self.groups]
        self.lr0 = list(self.lrs)
        self.group_of = {i: gi for gi, g in enumerate(self.groups) for i in g["params"]}
        init = ref.REFERENCES[self.reference][0]
        self.main = [_Track(init(_copy64(p))) for p in self.params]
        self.acc: list[dict[str, np.ndarray]] = [{} for _ in self.params]
        self.hyp = {h.label: [_Track(ref.REFERENCES[h.reference or self.reference][0](_copy64(p)))
                              for p in self.params] for h in self.hypotheses}
        self.compared_state: set[str] = set()
        if self.observe is None and self.recorder is not None:
            self.observe = self.recorder.observe

    # ----------------------------------------------------------------- helpers
    def hp(self, gi: int) -> dict[str, Any]:
        g = {k: v for k, v in self.groups[gi].items() if k != "params"}
        return {**self.defaults, **g, "lr": self.lrs[gi]}

    def set_lr(self, gi: int, lr: float) -> None:
        self.lrs[gi] = lr
        self.instance.set_lr(gi, lr)

    def _kwargs(self, gi: int, hyp: Hypothesis | None = None) -> tuple[Callable[..., Any], dict[str, Any]]:
        name = hyp.reference if hyp is not None and hyp.reference else self.reference
        hp = self.hp(gi)
        if hyp is not None and hyp.lr_frozen:
            hp["lr"] = self.lr0[gi]
        kw = self.family.reference_kwargs(name, hp, self.convention)
        if hyp is not None:
            kw.update(hyp.overrides)
        return ref.REFERENCES[name][1], kw

    # ----------------------------------------------------------------- one step
    def step(self, grads: Sequence[torch.Tensor | None], *, what: str = "") -> StepReport:
        """Set the gradients, step the target, compare; raises ``CheckFailure`` on a mismatch."""
        dtype = self.params[0].dtype
        before = [_copy64(p) for p in self.params]
        for p, g in zip(self.params, grads):
            p.grad = None if g is None else g.detach().clone()
        g64 = [None if g is None else _copy64(g) for g in grads]
        self.instance.step()
        self.t += 1
        report = StepReport()
        for i, p in enumerate(self.params):
            if p.dtype != dtype:
                raise TargetError(f"{self.target.name} changed the dtype of parameter {self.names[i]} to {p.dtype}")
            got = _copy64(p)
            gi = self.group_of[i]
            gi64 = g64[i]
            if gi64 is None:
                self._compare_unchanged(i, before[i], got, what)
                continue
            fn, kw = self._kwargs(gi)
            expected, new_state = fn(before[i], gi64, self.main[i].state, **kw)
            bound, acc = self._bounds(fn, kw, before[i], gi64, self.main[i].state, self.acc[i], expected,
                                      new_state, dtype)
            self.main[i].state, self.acc[i] = new_state, acc
            tol = Tolerance(bound, tols.optim_explanation(dtype, self.t))
            for h in self.hypotheses:
                tr = self.hyp[h.label][i]
                hfn, hkw = self._kwargs(gi, h)
                hexp, tr.state = hfn(before[i], gi64, tr.state, **hkw)
                if tr.matching and not _within(got, hexp, bound):
                    tr.matching = False
            c = compare(got, expected, tol, f"parameter {self.names[i]}")
            report.worst = max(report.worst, c.ratio)
            report.max_abs_err = max(report.max_abs_err, c.max_abs_err)
            if self.observe:
                self.observe(c.ratio, c.max_abs_err)
            if not c.ok and self.raise_on_mismatch:
                raise CheckFailure(self._failure(c, i, gi, what))
            if self.raise_on_mismatch:
                self._compare_state(i, gi, new_state, acc, dtype, what)
        return report

    def _bounds(self, fn: Callable[..., Any], kw: dict[str, Any], p: np.ndarray, g: np.ndarray, state: Any,
                acc: dict[str, np.ndarray], expected: np.ndarray, new_state: Any,
                dtype: torch.dtype) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The parameter bound and the new state bounds, by moving each input of the step by its bound."""
        dp = np.zeros_like(expected)
        new_acc = {f: np.zeros_like(np.asarray(getattr(new_state, f), dtype=np.float64))
                   for f in new_state._fields if _is_array(getattr(new_state, f))}

        def spread(moved: list[tuple[np.ndarray, Any]]) -> None:
            nonlocal dp
            worst_p = np.zeros_like(expected)
            worst_s = {f: np.zeros_like(v) for f, v in new_acc.items()}
            for p2, s2 in moved:
                worst_p = np.maximum(worst_p, np.abs(p2 - expected))
                for f in worst_s:
                    worst_s[f] = np.maximum(worst_s[f], np.abs(getattr(s2, f) - getattr(new_state, f)))
            dp = dp + worst_p
            for f in worst_s:
                new_acc[f] = new_acc[f] + worst_s[f]

        eg = tols.optim_input_bounds(g, p, float(kw.get("weight_decay", 0.0)), dtype)
        with np.errstate(all="ignore"):
            spread([fn(p, g + eg, state, **kw), fn(p, g - eg, state, **kw)])
            for f in state._fields:
                val = getattr(state, f)
                if not _is_array(val):
                    continue
                e = acc.get(f, np.zeros_like(val)) + tols.optim_state_rounding(val, dtype)
                lo = val - e
                if f in NONNEGATIVE:
                    lo = np.maximum(lo, 0.0)
                spread([fn(p, g, state._replace(**{f: val + e}), **kw),
                        fn(p, g, state._replace(**{f: lo}), **kw)])
        for f in new_acc:
            new_acc[f] = new_acc[f] + tols.optim_state_rounding(getattr(new_state, f), dtype)
            new_acc[f] = np.where(np.isfinite(new_acc[f]), new_acc[f], np.inf)
        dp = np.where(np.isfinite(dp), dp, np.inf)
        return tols.optim_param_bound(dp, p, expected, dtype), new_acc

    def _exact(self, **metrics: float) -> None:
        """An exact verdict failed: its numbers under their own names, and no err/tol."""
        if self.recorder is not None:
            self.recorder.not_a_ratio()
            for name, value in metrics.items():
                self.recorder.metric(name, value)

    def _compare_unchanged(self, i: int, before: np.ndarray, got: np.ndarray, what: str) -> None:
        """Exact: a parameter without gradient is left as it was (no tolerance, so no err/tol)."""
        if np.array_equal(before, got, equal_nan=True) or not self.raise_on_mismatch:
            return
        moved = ~((before == got) | (np.isnan(before) & np.isnan(got)))
        self._exact(changed_without_grad=int(moved.sum()))
        j = int(np.argmax(np.where(moved, np.nan_to_num(np.abs(got - before), nan=np.inf), -1.0)))
        raise CheckFailure(
            f"{self.context}: step {self.t}{what}: parameter {self.names[i]} had no gradient (grad is None) "
            f"but changed: element {j} was {before.flat[j]:.9g}, now {got.flat[j]:.9g}; a step must leave a "
            "parameter without gradient and its state untouched\n"
            "  likely cause: a None gradient treated as zero, so weight decay or momentum still move it "
            "(torch skips parameters whose grad is None)")

    def _compare_state(self, i: int, gi: int, new_state: Any, acc: dict[str, np.ndarray], dtype: torch.dtype,
                       what: str) -> None:
        st = self.instance.state_of(self.params[i])
        for f in new_state._fields:
            val = getattr(new_state, f)
            if val is None:
                continue
            key = next((k for k in STATE_NAMES.get(f, (f,)) if k in st), None)
            if key is None:
                continue
            got = st[key]
            if f == "step":
                n = float(got.item() if isinstance(got, torch.Tensor) else got)
                self.compared_state.add(f"{f}")
                if n != val:
                    self._exact(state_step=n, expected_step=float(val))
                    raise CheckFailure(f"{self.context}: step {self.t}{what}: state['{key}'] of parameter "
                                       f"{self.names[i]} is {n:g}; expected {val} (one per step taken with a "
                                       "gradient)\n  likely cause: the step counter is not advanced per step, or "
                                       "advanced for parameters without gradient")
                continue
            if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(np.shape(val)):
                continue  # a differently shaped entry of the same name is the target's own business
            self.compared_state.add(key)
            tol = Tolerance(tols.optim_state_bound(acc[f], dtype), tols.optim_explanation(dtype, self.t))
            c = compare(got, val, tol, f"state['{key}'] of parameter {self.names[i]}")
            if self.observe:
                self.observe(c.ratio, c.max_abs_err)
            if not c.ok:
                alt = [h for h in self.hypotheses if all(tr.matching for tr in self.hyp[h.label])
                       and _is_array(getattr(self.hyp[h.label][i].state, f, None))
                       and _within(to_f64(got), getattr(self.hyp[h.label][i].state, f), tol.bound)]
                raise CheckFailure(self._failure(c, i, gi, what, state_key=key, state_matches=alt))

    def _failure(self, c: Any, i: int, gi: int, what: str, state_key: str | None = None,
                 state_matches: Sequence[Hypothesis] = ()) -> str:
        hp = self.hp(gi)
        head = (f"{self.context}: step {self.t}{what}: {c.what} (param group {gi}: "
                f"{_fmt_hp(hp)}) under the {self.convention.name} convention, reference {self.reference}")
        lines = [head, c.report().split("\n", 1)[1] if "\n" in c.report() else c.report()]
        if c.nonfinite and state_key is None:
            lines.append("  the target produced NaN/inf where the reference is finite")
        matched = [h for h in self.hypotheses if all(tr.matching for tr in self.hyp[h.label])]
        if matched and state_key is None:
            for h in matched[:3]:
                lines.append(f"  likely cause: the update matches {h.label}: {h.hint}")
        elif state_matches:
            for h in state_matches[:3]:
                lines.append(f"  likely cause: state['{state_key}'] matches {h.label}: {h.hint}")
        elif state_key is not None:
            lines.append(f"  likely cause: state['{state_key}'] does not follow the reference recurrence "
                         f"({self.family.state_formula(self.reference, state_key, self.convention)})")
        return "\n".join(lines)

    def matching(self) -> list[str]:
        """Labels of the hypotheses the target has matched at every step so far."""
        return [h.label for h in self.hypotheses if all(tr.matching for tr in self.hyp[h.label])]


def _copy64(t: torch.Tensor) -> np.ndarray:
    """A float64 copy (``to_f64`` of a float64 CPU tensor shares its memory, and the target steps in place)."""
    return np.array(to_f64(t), dtype=np.float64, copy=True)


def _is_array(v: Any) -> bool:
    return isinstance(v, np.ndarray)


def _within(got: np.ndarray, expected: np.ndarray, bound: np.ndarray) -> bool:
    with np.errstate(invalid="ignore"):
        return bool(np.all(np.isfinite(expected)) and np.all(np.abs(got - expected) <= bound))


def _fmt_hp(hp: dict[str, Any]) -> str:
    out = []
    for k, v in hp.items():
        if isinstance(v, float):
            v = f"{v:g}"
        elif isinstance(v, tuple):
            v = "(" + ", ".join(f"{x:g}" for x in v) + ")"
        out.append(f"{k}={v}")
    return ", ".join(out)


def tensors(values: list[np.ndarray], dtype: torch.dtype) -> list[torch.Tensor]:
    return [torch.tensor(v, dtype=dtype).requires_grad_(True) for v in values]
