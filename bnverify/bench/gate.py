"""The perf gate: is this run slower than a baseline run by more than the noise of the two?

Baseline: the benchmark JSON of a previous run (``bench/benchmark.json`` of its MLflow run),
named by ``$BNVERIFY_PERF_BASELINE``.  Cases are matched on target, device (the hardware's name,
``device_name``), operation, shape and dtype; anything unmatched is listed, never failed.

What is compared
    Not the absolute times: between two runs the machine changes (another job on a shared
    host, a different clock, a different runner: run-to-run differences of 26% against 0.3%
    within one job have been reported for CI runners).  Each run times torch's native batch
    norm in the same rounds as the target, interleaved (``bnverify.bench.timers``), so the
    statistic is the target's time *relative to native measured over the same period*::

        rho = L(target) - L(native),   L(arm) = mean of log t over the arm's fastest tenth
                                                (at least 3 samples; ``stats.low_tail``)

    Drift that slows a whole period slows both arms and cancels in the difference; a
    regression of the target does not.  The fastest tenth rather than the median because
    host-timed calls on a shared machine are bimodal (undisturbed, or preempted for a
    scheduler slice), and the median jumps between the modes with the load: on the 2-core
    development machine the reference's 32x32x16x16 training step read 8.4x native by medians
    in one run and 3.5x in the next, 3.55x and 3.42x by fastest tenths.  GPU event timings have
    no preemption, and there the fastest tenth is simply a low quantile of a tight distribution;
    one statistic keeps one gate.  The absolute change of the target's median is reported beside
    it.

The noise of one run
    ``se(L) = sd / sqrt(k)`` over the ``k`` fastest log-times (``stats.low_tail``: an
    approximation, since those are the smallest order statistics rather than independent
    draws), and ``se(rho) = sqrt(se(L_target)^2 + se(L_native)^2)``.

The threshold
    Two independent runs: ``D = rho_now - rho_baseline`` has standard error
    ``se_D = sqrt(se_now^2 + se_baseline^2)``.  The run fails when::

        D > max(PERF_GATE_Z * se_D, log(1 + floor))

    ``PERF_GATE_Z = 3`` (one-sided): with normal errors a false alarm has probability 0.13% per
    case, about 2% over the 12 cases of a CPU run.  The floor covers what one run cannot see of
    itself: the ratio to native moves between runs by more than the within-run error (memory
    bandwidth taken by other jobs slows a many-pass target more than a one-pass native; fewer
    undisturbed calls in a busy period).  Measured with the reference target, two pairs of
    back-to-back runs of the CPU grid on the 2-core development machine while other jobs kept its
    load average at 5-7: cases with 100-200 rounds moved by |D| < 0.06; cases with 10-40 rounds
    (the large shapes, where the reference takes 15-200 ms a call) by up to 0.35 upwards and 0.52
    downwards, beyond 3 se_D.  So the floor depends on the machine: ``PERF_GATE_MIN_SLOWDOWN`` =
    25% (``D > 0.22``) when both runs' load averages stayed within their cores, and
    ``PERF_GATE_MIN_SLOWDOWN_BUSY`` = 75% (``D > 0.56``, above every change measured) when either
    did -- the report then says so, and that only gross slowdowns are judged.  A 2x slowdown
    (``D = 0.69``) fails on either machine whenever ``se_D < 0.23``.
    A case with fewer than ``PERF_GATE_MIN_ROUNDS`` rounds in either run is reported as
    undecided, never failed.  Only slowdowns fail: a speed-up is reported.
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
from bnverify.bench.stats import low_tail

BASELINE_ENV = "BNVERIFY_PERF_BASELINE"
"""Environment variable naming the baseline benchmark JSON."""


class BaselineError(Exception):
    """The baseline file cannot be used (missing, not JSON, not a bnverify benchmark)."""


def baseline_path(option: str | None = None) -> str | None:
    """The baseline: ``option`` (``--perf-baseline``, once the option exists) or ``$BNVERIFY_PERF_BASELINE``
    (read at call time), or None."""
    return option or os.environ.get(BASELINE_ENV) or None


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
    rounds: tuple[int, int] = (0, 0)
    """Rounds of (now, baseline)."""
    loaded: str = ""
    """Non-empty when either run's machine was busier than its cores (their load averages)."""

    @property
    def change(self) -> float:
        """D: change of log(target/native) between the runs (positive: slower)."""
        return self.rho_now - self.rho_base

    @property
    def se(self) -> float:
        return math.hypot(self.se_now, self.se_base)

    @property
    def floor(self) -> float:
        """The smallest relative slowdown that fails: larger when either run's machine was busy."""
        return tols.PERF_GATE_MIN_SLOWDOWN_BUSY if self.loaded else tols.PERF_GATE_MIN_SLOWDOWN

    @property
    def threshold(self) -> float:
        return max(tols.PERF_GATE_Z * self.se, math.log1p(self.floor))

    @property
    def decided(self) -> bool:
        return math.isfinite(self.se) and min(self.rounds) >= tols.PERF_GATE_MIN_ROUNDS

    @property
    def regressed(self) -> bool:
        return self.decided and self.change > self.threshold

    def text(self) -> str:
        op, shape, dtype = self.key
        pct = lambda v: f"{100 * (math.exp(v) - 1):+.1f}%"  # noqa: E731
        head = f"{op} {shape_text(shape)} {dtype}: time relative to native {math.exp(self.rho_now):.3f} " \
               f"vs baseline {math.exp(self.rho_base):.3f} ({pct(self.change)})"
        if not self.decided:
            return head + f"; undecided: {min(self.rounds)} rounds, the gate needs {tols.PERF_GATE_MIN_ROUNDS}"
        busy = " on a busy machine" if self.loaded else ""
        return (f"{head}, threshold {pct(self.threshold)} (max of {tols.PERF_GATE_Z:g} x noise "
                f"{100 * self.se:.1f}% and floor {100 * self.floor:.0f}%{busy}); "
                f"target median {100 * self.absolute_change:+.1f}% unnormalised")

    def to_dict(self) -> dict[str, Any]:
        op, shape, dtype = self.key
        return {"op": op, "shape": list(shape), "dtype": dtype, "rho_now": self.rho_now, "rho_base": self.rho_base,
                "se_now": self.se_now, "se_base": self.se_base, "change": self.change, "threshold": self.threshold,
                "absolute_change": self.absolute_change, "rounds": list(self.rounds), "loaded": self.loaded,
                "regressed": self.regressed, "decided": self.decided}


def _rho(r: BenchResult) -> tuple[float, float]:
    lt, st, _ = low_tail(r.samples["target"])
    ln, sn, _ = low_tail(r.samples["native"])
    return lt - ln, math.hypot(st, sn)


def _load(r: BenchResult) -> str:
    load, cores = r.extra.get("load_average"), r.extra.get("cpu_count")
    if isinstance(load, (int, float)) and isinstance(cores, int) and load > cores:
        return f"load average {load:.1f} on {cores} cores"
    return ""


def decide(now: BenchResult, base: BenchResult) -> Decision:
    """The gate's decision for one case measured now and in the baseline (see the module docstring)."""
    r_now, se_now = _rho(now)
    r_base, se_base = _rho(base)
    t_now, t_base = now.summary().median, base.summary().median
    busy = [f"{who}: {w}" for who, w in (("this run", _load(now)), ("baseline", _load(base))) if w]
    loaded = "; ".join(busy)
    return Decision(key=now.key(), rho_now=r_now, rho_base=r_base, se_now=se_now, se_base=se_base,
                    absolute_change=t_now / t_base - 1 if t_base > 0 else float("nan"),
                    rounds=(now.rounds, base.rounds), loaded=loaded)


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
        busy = sorted({d.loaded for d in self.decisions if d.loaded})
        if busy:
            lines.append(f"  note: a machine busier than its cores ({'; '.join(busy)}): run-to-run variation "
                         f"exceeds what one run shows, so only slowdowns beyond "
                         f"{100 * tols.PERF_GATE_MIN_SLOWDOWN_BUSY:.0f}% fail; judge smaller ones on a quiet machine")
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
