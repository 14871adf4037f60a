"""The perf gate: is this run slower than a baseline run by more than the noise of the two?

Baseline: the benchmark JSON of a previous run (``bench/benchmark.json`` of its MLflow run),
named by ``$BNVERIFY_PERF_BASELINE``.  Cases are matched on target, device (the hardware's name,
``device_name``), operation, shape and dtype; anything unmatched is listed, never failed.

What is compared
    Not the absolute times: between two runs the machine changes (another job on a shared
    host, a different clock, a different runner: run-to-run differences of 26% against 0.3%
    within one job have been reported for CI runners).  Each run times torch's native batch
    norm in the same rounds as the target, interleaved (``bnverify.bench.timers``), so the
    statistic is the target's time *relative to native in the same round*::

        rho = median_k log(t_target,k / t_native,k)          (k: rounds of one run)

    Drift that slows a whole round slows both arms and cancels in the ratio; a regression of
    the target does not.  The absolute change is reported beside it.

The noise of one run
    ``rho`` is a median, so its uncertainty comes from order statistics
    (``bnverify.bench.stats``): the 95% confidence interval ``[r_(l), r_(n-l+1)]`` of the
    median, distribution-free.  Its half-width ``h`` over 1.96 is the standard error
    ``se = h / 1.96`` (for a normal sample the CI is ``median +/- 1.96 * 1.2533 sigma/sqrt(n)``,
    and ``1.2533 sigma/sqrt(n)`` is the median's standard error, so the conversion is exact
    there and conservative for heavier tails).

The threshold
    Two independent runs: ``D = rho_now - rho_baseline`` has standard error
    ``se_D = sqrt(se_now^2 + se_baseline^2)``.  The run fails when::

        D > max(PERF_GATE_Z * se_D, log(1 + PERF_GATE_MIN_SLOWDOWN))

    ``PERF_GATE_Z = 3`` (one-sided): with normal errors a false alarm has probability 0.13% per
    case, about 2% over the 12 cases of a CPU run.  The floor ``PERF_GATE_MIN_SLOWDOWN`` covers
    what one run cannot see of itself: the ratio to native moves between runs by more than the
    within-run interval (a different memory placement of the buffers, a different thread
    placement).  Measured on the 2-core development machine with the reference target, two
    back-to-back runs of the CPU grid: changes of ``rho`` up to 0.07 (7%) with within-run
    ``se`` of 0.2-1.5%; the floor is set at twice that, 15%.  A 2x slowdown (``D = 0.69``) fails
    with any noise the suite accepts; a change within the floor passes.
    A case with fewer than 6 rounds in either run has no interval (``se`` is infinite) and is
    reported as undecided, never failed.  Only slowdowns fail: a speed-up is reported.
    Constants: ``bnverify.tolerances`` (perf gate section).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from bnverify import tolerances as tols
from bnverify.bench.report import FORMAT, BenchResult, shape_text
from bnverify.bench.stats import median_and_se

BASELINE_ENV = "BNVERIFY_PERF_BASELINE"
"""Environment variable naming the baseline benchmark JSON."""


class BaselineError(Exception):
    """The baseline file cannot be used (missing, not JSON, not a bnverify benchmark)."""


def baseline_path() -> str | None:
    """The baseline named by ``$BNVERIFY_PERF_BASELINE`` (read at call time), or None."""
    return os.environ.get(BASELINE_ENV) or None


def load_baseline(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BaselineError(f"cannot read {p}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise BaselineError(f"{p} is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("results"), list):
        raise BaselineError(f"{p} is not a bnverify benchmark JSON (format {FORMAT!r}, from bench/benchmark.json)")
    return doc


@dataclass(frozen=True)
class Decision:
    """The gate's verdict on one case."""

    key: tuple[str, tuple[int, ...], str]
    rho_now: float
    rho_base: float
    se_now: float
    se_base: float
    absolute_change: float
    """Relative change of the target's median time, not normalised by native (information only)."""

    @property
    def change(self) -> float:
        """D: change of log(target/native) between the runs (positive: slower)."""
        return self.rho_now - self.rho_base

    @property
    def se(self) -> float:
        return math.hypot(self.se_now, self.se_base)

    @property
    def threshold(self) -> float:
        return max(tols.PERF_GATE_Z * self.se, math.log1p(tols.PERF_GATE_MIN_SLOWDOWN))

    @property
    def decided(self) -> bool:
        return math.isfinite(self.se)

    @property
    def regressed(self) -> bool:
        return self.decided and self.change > self.threshold

    def text(self) -> str:
        op, shape, dtype = self.key
        pct = lambda v: f"{100 * (math.exp(v) - 1):+.1f}%"  # noqa: E731
        head = f"{op} {shape_text(shape)} {dtype}: time relative to native {math.exp(self.rho_now):.3f} " \
               f"vs baseline {math.exp(self.rho_base):.3f} ({pct(self.change)})"
        if not self.decided:
            return head + "; undecided: fewer than 6 rounds in a run"
        return (f"{head}, threshold {pct(self.threshold)} (max of {tols.PERF_GATE_Z:g} x noise "
                f"{100 * self.se:.1f}% and floor {100 * tols.PERF_GATE_MIN_SLOWDOWN:.0f}%); "
                f"target median {100 * self.absolute_change:+.1f}% unnormalised")

    def to_dict(self) -> dict[str, Any]:
        op, shape, dtype = self.key
        return {"op": op, "shape": list(shape), "dtype": dtype, "rho_now": self.rho_now, "rho_base": self.rho_base,
                "se_now": self.se_now, "se_base": self.se_base, "change": self.change, "threshold": self.threshold,
                "absolute_change": self.absolute_change, "regressed": self.regressed, "decided": self.decided}


def decide(now: BenchResult, base: BenchResult) -> Decision:
    """The gate's decision for one case measured now and in the baseline (see the module docstring)."""
    r_now, se_now = median_and_se(now.log_ratios())
    r_base, se_base = median_and_se(base.log_ratios())
    t_now, t_base = now.summary().median, base.summary().median
    return Decision(key=now.key(), rho_now=r_now, rho_base=r_base, se_now=se_now, se_base=se_base,
                    absolute_change=t_now / t_base - 1 if t_base > 0 else float("nan"))


@dataclass
class GateReport:
    """All decisions of one run against one baseline, and what could not be matched."""

    path: str
    decisions: list[Decision]
    unmatched: list[str]
    mismatch: str | None = None
    """Why nothing was compared (another target or device), else None."""

    @property
    def regressions(self) -> list[Decision]:
        return [d for d in self.decisions if d.regressed]

    def text(self) -> str:
        lines = [f"perf gate against {self.path}:"]
        if self.mismatch:
            lines.append(f"  nothing compared: {self.mismatch}")
        for d in self.decisions:
            mark = "REGRESSION" if d.regressed else ("undecided" if not d.decided else "ok")
            lines.append(f"  {mark}: {d.text()}")
        if self.unmatched:
            lines.append(f"  not in the baseline: {', '.join(self.unmatched)}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"baseline": self.path, "decisions": [d.to_dict() for d in self.decisions],
                "unmatched": self.unmatched, "mismatch": self.mismatch,
                "regressions": len(self.regressions)}


def compare(results: Sequence[BenchResult], baseline: dict[str, Any], *, target: str, device_name: str,
            path: str = "") -> GateReport:
    """Match this run's cases to the baseline's (same target and device) and decide each."""
    if baseline.get("target") != target:
        return GateReport(path, [], [r.label() for r in results],
                          mismatch=f"the baseline is of target {baseline.get('target')!r}, this run of {target!r}")
    if baseline.get("device_name") != device_name:
        return GateReport(path, [], [r.label() for r in results],
                          mismatch=f"the baseline ran on {baseline.get('device_name')!r}, this run on {device_name!r}")
    base: dict[tuple[str, tuple[int, ...], str], BenchResult] = {}
    for d in baseline["results"]:
        try:
            b = BenchResult.from_dict(d)
        except (KeyError, TypeError, ValueError):
            continue
        base[b.key()] = b
    decisions, unmatched = [], []
    for r in results:
        found = base.get(r.key())
        if found is None or "native" not in found.samples or "native" not in r.samples:
            unmatched.append(r.label())
        else:
            decisions.append(decide(r, found))
    return GateReport(path, decisions, unmatched)


def describe_key(key: tuple[str, tuple[int, ...], str]) -> str:
    op, shape, dtype = key
    return f"{op} {shape_text(shape)} {dtype}"


__all__ = ["BASELINE_ENV", "BaselineError", "Decision", "GateReport", "baseline_path", "compare", "decide",
           "describe_key", "load_baseline"]
