"""Bounded run time: each hypothesis check's number of examples adapts to the target's speed.

A correct target on a pure-Python tensor backend takes tenths of a second per call, and the
quick tier's 50 examples per check would then take hours.  ``--time-budget S`` (default by tier,
``DEFAULT_TIME_BUDGET_S``) bounds the run instead: the target's training forward is timed once
before the checks (``measure_call_s``), and before each hypothesis check the examples it may draw
are set so that the remaining checks fit in the remaining time, from the measured cost of the
examples run so far (from the call time until a check has run).  The count never exceeds the
tier's (a fast target runs exactly the tier's examples) and never falls below ``MIN_EXAMPLES``
(so a very slow target can overrun the budget; the report then says by how much).

Reproducibility: the reduced count is rounded down to a coarse grid (``GRID``), so that timing noise
rarely changes it, and every check whose count was reduced reports the ``--max-examples N`` that
draws exactly its examples again.  An explicit ``--max-examples`` is taken as given: the budget
never changes it, so a reproduce command replays the same examples on any machine.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

DEFAULT_TIME_BUDGET_S = {"quick": 300.0, "full": 1800.0}
"""Seconds a run may take, by tier, when ``--time-budget`` is not given (0 there: no limit)."""

MIN_EXAMPLES = 5
"""The fewest examples a hypothesis check draws under a budget (fewer where the tier itself asks for fewer)."""

TIMING_VALUES = 512
"""Values of the input the call time is measured on: about the median size of the suites' drawn cases."""

TIMING_CALLS = 3
"""Training-forward calls timed before the checks; their median is the call time."""

EXAMPLE_COST_IN_CALLS = 8.0
"""Seconds per example of a quick-tier check, in units of the measured call time, before any check has
run: the mean over the quick tier's examples for a slow (pure-Python) target, which makes several
calls per example (forward, backward, eval, a second instance) on inputs of varied size."""

GRID = (5, 7, 10, 14, 20, 28, 40, 56, 80, 113, 160, 226, 320, 452, 640, 905, 1280)
"""Reduced examples counts are rounded down to these (steps of sqrt(2)): a 10% slower machine rarely
draws a different number of examples."""


def _grid_floor(p: float) -> int:
    below = [g for g in GRID if g <= p]
    return below[-1] if below else GRID[0]


def measure_call_s(target: Any, device: str) -> float | None:
    """Median seconds of a training forward of the target on ``TIMING_VALUES`` values; None when the
    target's family has no such call or the call fails (the preflight reports that)."""
    if getattr(target.family, "name", None) != "batchnorm" or getattr(target.watchdog, "hung", None):
        return None
    import torch

    from bnverify.adapter import BNConfig
    from bnverify.target import NotSupported, TargetError

    try:
        ranks = target.supported_ranks(device)
        if not ranks:
            return None
        rank = ranks[0]
        c = 4
        spatial = (4,) * (rank - 2)
        n = max(2, TIMING_VALUES // (c * math.prod(spatial)))
        g = torch.Generator().manual_seed(0)
        x = torch.randn((n, c) + spatial, generator=g).to(device)
        inst = target.instance(BNConfig(num_features=c, rank=rank, device=device))
        times = []
        for _ in range(TIMING_CALLS):
            t0 = time.perf_counter()
            inst.forward(x, training=True)
            times.append(time.perf_counter() - t0)
    except (TargetError, NotSupported):
        return None
    return statistics.median(times)


@dataclass
class _Count:
    calls: int = 0
    failed_at: int | None = None
    """Calls up to and including the first failing one (the examples generated before shrinking)."""
    t_fail: float | None = None
    t0: float = 0.0


_COUNT = _Count()


def count_examples(fn: Any) -> None:
    """Count the calls of a hypothesis test's body (``fn.hypothesis.inner_test``, which hypothesis
    documents as replaceable): the examples a check ran, for the report and the budget."""
    h = getattr(fn, "hypothesis", None)
    inner = getattr(h, "inner_test", None)
    if h is None or inner is None or getattr(inner, "_bnverify_counted", False):
        return

    @functools.wraps(inner)
    def counted(*args: Any, **kwargs: Any) -> Any:
        _COUNT.calls += 1
        try:
            return inner(*args, **kwargs)
        except BaseException:
            if _COUNT.failed_at is None:
                _COUNT.failed_at = _COUNT.calls
                _COUNT.t_fail = time.perf_counter()
            raise

    counted._bnverify_counted = True  # type: ignore[attr-defined]
    h.inner_test = counted


@dataclass
class Plan:
    """One check's share: ``examples`` to draw, and ``flag`` (``--max-examples N``) when the budget reduced it."""

    examples: int
    flag: str | None = None


@dataclass
class RunBudget:
    """The run's time budget and what it has spent; one per process (each pytest-xdist worker has its own,
    sized to its share of the checks)."""

    total_s: float
    call_s: float | None
    explicit: bool
    """``--max-examples`` was given: counts are as asked, the budget only reports."""
    workers: int = 1
    t0: float = field(default_factory=time.perf_counter)
    weights: dict[str, float] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)
    spent_s: float = 0.0
    spent_examples: int = 0
    reduced: dict[str, int] = field(default_factory=dict)
    """nodeid -> examples, for the checks the budget reduced."""

    @property
    def active(self) -> bool:
        return self.total_s > 0 and not self.explicit

    def per_example_s(self) -> float | None:
        if self.spent_examples:
            return self.spent_s / self.spent_examples
        return None if self.call_s is None else self.call_s * EXAMPLE_COST_IN_CALLS

    def plan(self, nodeid: str, tier_examples: int, profile_examples: int, fraction: float | None) -> Plan:
        """The examples of the check ``nodeid``, whose tier count is ``tier_examples`` (``profile_examples``
        times its ``fraction``, at least 3)."""
        est = self.per_example_s()
        if not self.active or est is None or est <= 0:
            return Plan(tier_examples)
        remaining_s = self.total_s - (time.perf_counter() - self.t0)
        own = self.weights.get(nodeid, 1.0)
        left = sum(w for k, w in self.weights.items() if k not in self.done)
        remaining_w = max(own, left / self.workers if self.workers > 1 else left)
        p = remaining_s / (remaining_w * est) if remaining_s > 0 else 0.0
        if p >= profile_examples:
            return Plan(tier_examples)
        p_grid = _grid_floor(p)
        n = int(p_grid * fraction) if fraction is not None else p_grid
        n = min(tier_examples, max(min(MIN_EXAMPLES, tier_examples), n))
        if n >= tier_examples:
            return Plan(tier_examples)
        self.reduced[nodeid] = n
        return Plan(n, f"--max-examples {_flag_for(n, fraction)}")

    def start(self) -> None:
        _COUNT.calls, _COUNT.failed_at, _COUNT.t_fail, _COUNT.t0 = 0, None, None, time.perf_counter()

    def finish(self, nodeid: str) -> tuple[int, int]:
        """Record the check that just ran; returns (examples generated, calls spent shrinking)."""
        self.done.add(nodeid)
        calls, failed_at = _COUNT.calls, _COUNT.failed_at
        end = _COUNT.t_fail if _COUNT.t_fail is not None else time.perf_counter()
        generated = failed_at if failed_at is not None else calls
        if generated:
            self.spent_s += end - _COUNT.t0
            self.spent_examples += generated
        return generated, calls - generated


def _flag_for(n: int, fraction: float | None) -> int:
    """The ``--max-examples`` value that gives a check of this ``fraction`` exactly ``n`` examples."""
    if fraction is None:
        return n
    p = max(1, math.ceil(n / fraction))
    while max(3, int(p * fraction)) > n and p > 1:
        p -= 1
    while max(3, int(p * fraction)) < n:
        p += 1
    return p
