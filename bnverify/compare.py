"""Compare a target's tensor with the float64 oracle and explain the difference in the user's terms.

``compare`` gives a ``Comparison`` (worst index, expected and got, the tolerance and its explanation,
likely causes); ``matches`` tests a bug hypothesis against the same tolerance; ``sweep_verdict``
reports a sweep over scales or shifts by the point nearest 1 where it breaks.  A wrong target raises
``CheckFailure``, whose message is the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from bnverify.adapter import TargetError
from bnverify.tolerances import MATCH_SLACK, Tolerance


NO_KNOWN_CAUSE = ("no known bug pattern reproduces this output: none of the hypotheses tested matches it within "
                  "the tolerance, so no cause is named (the numbers above are what was measured)")
"""The line a diagnosed failure prints when no hypothesis reproduces the target's numbers."""


class CheckFailure(AssertionError):
    """A check's verdict: the target's result is wrong.  The message is the report."""


def to_f64(a: Any) -> np.ndarray:
    """Upcast a tensor or array to a float64 numpy array (exact for every float dtype)."""
    if isinstance(a, torch.Tensor):
        return a.detach().to("cpu", torch.float64).numpy()
    return np.asarray(a, dtype=np.float64)


@dataclass
class Comparison:
    what: str
    ratio: float  # max |err| / tol (inf for NaN/inf where finite was expected)
    max_abs_err: float
    worst_index: tuple[int, ...]
    expected_at_worst: float
    got_at_worst: float
    tol_at_worst: float
    n_bad: int
    n_total: int
    bad_channels: list[int]
    nonfinite: int
    explanation: str
    shape: tuple[int, ...] = ()
    causes: list[str] = field(default_factory=list)
    diagnosed: bool = False
    """True once bug hypotheses were tested against this comparison (``causes`` assigned): a report
    with no cause then says that none reproduces the output, instead of staying silent about it."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "causes" and "causes" in self.__dict__:  # assigned after construction: a diagnosis ran
            object.__setattr__(self, "diagnosed", True)
        object.__setattr__(self, name, value)

    @property
    def ok(self) -> bool:
        return self.ratio <= 1.0

    def report(self) -> str:
        if self.n_total == 0:
            return f"{self.what}: empty"
        idx = ", ".join(map(str, self.worst_index))
        ch = f" (channel {self.worst_index[1]})" if len(self.worst_index) >= 2 else (
            f" (channel {self.worst_index[0]})" if len(self.worst_index) == 1 else "")
        lines = [f"{self.what} differs from the float64 reference beyond tolerance"]
        if self.nonfinite:
            lines.append(f"  {self.nonfinite} of {self.n_total} values are NaN or inf where the reference is finite")
        lines.append(
            f"  worst at index ({idx}){ch}: expected {self.expected_at_worst:.9g}, got {self.got_at_worst:.9g}, "
            f"|error| {abs(self.got_at_worst - self.expected_at_worst):.3g} = {self.ratio:.3g} x tolerance {self.tol_at_worst:.3g}"
        )
        chans = ", ".join(map(str, self.bad_channels[:8])) + (" ..." if len(self.bad_channels) > 8 else "")
        lines.append(
            f"  out of tolerance: {self.n_bad} of {self.n_total} values ({100.0 * self.n_bad / self.n_total:.3g}%)"
            + (f", channels [{chans}]" if self.bad_channels else "")
        )
        lines.append(f"  tolerance: {self.explanation}")
        for c in self.causes:
            lines.append(f"  likely cause: {c}")
        if self.diagnosed and not self.causes:
            lines.append(f"  {NO_KNOWN_CAUSE}")
        return "\n".join(lines)


def compare(actual: Any, expected: np.ndarray, tol: Tolerance, what: str, *, channel_axis: int = 1) -> Comparison:
    """Elementwise ``|actual - expected| <= tol.bound``; NaN/inf where ``expected`` is finite always fails."""
    got = to_f64(actual)
    exp = np.asarray(expected, dtype=np.float64)
    if got.shape != exp.shape:
        raise TargetError(f"{what} has shape {got.shape}; expected {exp.shape}")
    bound = np.broadcast_to(np.asarray(tol.bound, dtype=np.float64), exp.shape)
    if exp.size == 0:
        return Comparison(what, 0.0, 0.0, (), 0.0, 0.0, 0.0, 0, 0, [], 0, tol.explanation, exp.shape)
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(got - exp)
        bad_nf = ~np.isfinite(got) & np.isfinite(exp)
        ratio = np.where(bad_nf, np.inf, err / bound)
        ratio = np.where(np.isnan(ratio), np.inf, ratio)
    flat = int(np.argmax(ratio))
    widx = tuple(int(i) for i in np.unravel_index(flat, exp.shape))
    bad = ratio > 1.0
    chans: list[int] = []
    if exp.ndim > channel_axis and bad.any():
        other = tuple(a for a in range(exp.ndim) if a != channel_axis)
        chans = [int(c) for c in np.nonzero(bad.any(axis=other))[0]]
    elif exp.ndim == 1 and bad.any():
        chans = [int(c) for c in np.nonzero(bad)[0]]
    finite_err = err[np.isfinite(err)]
    return Comparison(
        what=what,
        ratio=float(ratio.reshape(-1)[flat]),
        max_abs_err=float(finite_err.max()) if finite_err.size else float("inf"),
        worst_index=widx,
        expected_at_worst=float(exp[widx]),
        got_at_worst=float(got[widx]),
        tol_at_worst=float(bound[widx]),
        n_bad=int(bad.sum()),
        n_total=int(exp.size),
        bad_channels=chans,
        nonfinite=int(bad_nf.sum()),
        explanation=tol.explanation,
        shape=exp.shape,
    )


def matches(actual: Any, expected: np.ndarray, tol: Tolerance) -> bool:
    """True if ``actual`` is within ``tol`` of ``expected`` (used to test hypotheses about a bug)."""
    got = to_f64(actual)
    exp = np.asarray(expected, dtype=np.float64)
    if got.shape != exp.shape or not np.all(np.isfinite(got) == np.isfinite(exp)):
        return False
    with np.errstate(invalid="ignore", over="ignore"):
        fin = np.isfinite(exp)
        return bool(np.all(np.abs(got[fin] - exp[fin]) <= np.broadcast_to(tol.bound, exp.shape)[fin] * MATCH_SLACK))


def describe_case(**kw: Any) -> str:
    """``shape (4, 3), float32, eps=1e-3, ...`` for a failure's case line."""
    parts = []
    for k, v in kw.items():
        if isinstance(v, torch.dtype):
            v = str(v).replace("torch.", "")
        elif isinstance(v, float):
            v = f"{v:.3g}"
        elif isinstance(v, tuple):
            v = str(v)
        parts.append(f"{k}={v}")
    return ", ".join(parts)


def worst(comparisons: Sequence[Comparison]) -> Comparison:
    return max(comparisons, key=lambda c: c.ratio)


# --------------------------------------------------------------------------- sweeps (suite `invariance`)

@dataclass
class Swept:
    """One point of a sweep (a scale or a shift) and the comparison made there."""

    scale: float
    cmp: Comparison


def _observe_sweep(check: Any, rows: list[Swept], label: str) -> None:
    """Record every ratio, and the scale of the worst one seen by this check so far."""
    data = getattr(check, "data", None)
    for r in rows:
        prev = data.get("worst_ratio") if isinstance(data, dict) else None
        check.observe(r.cmp.ratio, r.cmp.max_abs_err)
        if prev is None or r.cmp.ratio > prev:
            check.metric(f"worst_{label}", r.scale)


def sweep_verdict(check: Any, rows: list[Swept], *, title: str, label: str, case: str,
                  causes: Callable[[Swept], list[str]] | None = None) -> None:
    """Record a sweep on the check; if any point failed, raise ``CheckFailure`` naming the failing point
    nearest 1 (``breaking_<label>``), the range that held, and the worst comparison with its likely causes.

    ``rows`` are ordered by distance from 1, so the first failure is the nearest one.
    """
    _observe_sweep(check, rows, label)
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
