"""Timing that can be trusted: interleaved arms, a flushed cache, a stated noise target.

Every measurement times several *arms* (the target's operation, torch's native batch norm doing
the same, and a copy of the same size: the roofline) **interleaved round by round**: round ``k``
runs each arm once, in a fixed order.  Whatever drifts during a run (another process on a
shared machine, a clock boost that ends, thermal throttling) hits all arms alike, so their
ratios are fair even when their absolute times are not.  Before each timed call the cache is
flushed by writing a buffer larger than it (outside the timed region), and each arm's
``prepare`` runs (outside the timed region too: the forward whose graph a timed backward
consumes, the mode switch).

CPU (``measure_cpu``)
    Through pytest-benchmark's ``benchmark.pedantic``: the **last** arm (the target) is
    pytest-benchmark's rounds (its clock, its table, its JSON, ``--benchmark-compare``); the other
    arms run in pedantic's ``setup`` of the same round, timed with the same clock.  pedantic does
    no calibration and takes a fixed number of rounds, so the rounds are sized from a timed
    warm-up round to fill ``Policy.budget_s``; the noise reached is reported.  When the fixture
    is disabled (``--benchmark-disable``, or pytest-xdist active: pytest-benchmark switches
    itself off there, and then ``benchmark.stats`` is None) or absent, the same interleaving runs
    as a ``time.perf_counter`` loop (``measure_loop``), which stops as soon as every arm's median
    is known to ``Policy.max_noise`` (95% CI half-width / median) or the budget or the round cap is
    reached.  The garbage collector is off while timing (as in ``timeit``).

    The cache flushed on a CPU is the last-level one (twice its size written), when that is at
    most ``CPU_FLUSH_CAP``.  A larger LLC (480 MiB reported on the 2-core development machine, a
    VM sharing it with its host) is not flushed at all: between calls only the other arms'
    traffic evicts, and the copy roofline is timed the same way, so the percent of roofline
    compares like with like.  (There, a 16 MiB copy runs at ~24 GB/s repeated alone and at
    ~5 GB/s interleaved with batch norms: the reported LLC does not keep the data.)  Flushing only the private
    L2 there was tried and rejected: it leaves the data in the LLC and evicts the interpreter's
    and dispatcher's own working set instead, which adds ~0.15 ms of re-warming to every call
    (a target doing twice the work of torch's timed at 1.1x torch on small shapes).

GPU (``measure_cuda``)
    A ``torch.cuda.Event(enable_timing=True)`` pair around each call, recorded on the current
    stream of the thread that called (the one that owns the CUDA context and the tensors: never
    a helper thread), one synchronisation per batch of rounds, never one per call (a host clock
    around an asynchronous launch measures the launch).  Before each call a buffer of
    ``max(4 x L2, 256 MiB)`` is zeroed: that flushes L2 (warm-L2 numbers for shapes below the L2
    size are cache bandwidth, up to ~2x off) and keeps the GPU busy while the host enqueues the
    start event and the kernel, so launch latency is not timed (the role NVBench's blocking
    kernel plays).  Warm-up rounds first (lazy initialisation, cuDNN algorithm choice, the
    allocator), then rounds until the noise target or the caps, as on the CPU.
    ``crosscheck_do_bench`` times the same call with ``triton.testing.do_bench`` when triton is
    importable, and the agreement is reported (never a verdict).  The code is in
    ``bnverify.bench.gpu``, re-exported here.
"""

from __future__ import annotations

import gc
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from bnverify.bench.stats import Summary, summarize

CPU_FLUSH_CAP = 256 * 2**20
"""Largest buffer written to flush a CPU cache before each timed call (bytes)."""

CPU_FLUSH_DEFAULT = 64 * 2**20
"""Flush size when the cache sizes cannot be read (bytes)."""

@dataclass(frozen=True)
class Policy:
    """How long to time: a noise target, round limits and a wall-clock budget per measurement."""

    max_noise: float = 0.02
    """Stop once every arm's median is known to this relative 95% CI half-width."""
    min_rounds: int = 10
    max_rounds: int = 200
    budget_s: float = 1.0
    """Wall time for one measurement (all arms, flushes and preparations), after warm-up."""
    warmup_rounds: int = 2
    check_every: int = 5
    """Rounds between noise checks."""


@dataclass
class Arm:
    """One thing to time: ``run`` is timed; ``prepare`` (untimed) runs before each timed call."""

    name: str
    run: Callable[[], Any]
    prepare: Callable[[], Any] | None = None


class ArmError(Exception):
    """An arm raised: ``arm`` names it, ``__cause__`` is the original exception."""

    def __init__(self, arm: str, exc: BaseException, round_: int) -> None:
        super().__init__(f"{arm} raised in round {round_}: {type(exc).__name__}: {exc}")
        self.arm = arm
        self.round = round_


@dataclass
class Timing:
    """Samples (seconds) per arm, in round order: ``samples[a][k]`` and ``samples[b][k]`` share round k."""

    samples: dict[str, list[float]]
    method: str
    warmup_rounds: int
    flush_bytes: int
    stop_reason: str
    wall_s: float
    max_noise: float
    notes: list[str] = field(default_factory=list)

    @property
    def rounds(self) -> int:
        return min((len(v) for v in self.samples.values()), default=0)

    def summary(self, arm: str) -> Summary:
        return summarize(self.samples[arm])

    def noise(self) -> dict[str, float]:
        return {a: summarize(v).rel_noise for a, v in self.samples.items()}

    @property
    def converged(self) -> bool:
        return all(n <= self.max_noise for n in self.noise().values())


def _call(arm: Arm, what: Callable[[], Any] | None, round_: int) -> Any:
    if what is None:
        return None
    try:
        return what()
    except Exception as exc:
        raise ArmError(arm.name, exc, round_) from exc


def _noise_met(samples: dict[str, list[float]], policy: Policy) -> bool:
    return all(summarize(v).rel_noise <= policy.max_noise for v in samples.values())


class _GcOff:
    def __enter__(self) -> None:
        self.was = gc.isenabled()
        gc.collect()
        gc.disable()

    def __exit__(self, *exc: Any) -> None:
        if self.was:
            gc.enable()


# --------------------------------------------------------------------------- flushing

def cpu_cache_sizes() -> dict[str, int]:
    """Data/unified cache sizes of CPU 0 by level (``{"L1": ..., "L2": ..., "L3": ...}``), from sysfs."""
    out: dict[str, int] = {}
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        entries = sorted(os.listdir(base))
    except OSError:
        return out
    for e in entries:
        if not e.startswith("index"):
            continue
        try:
            with open(f"{base}/{e}/level") as f:
                level = f.read().strip()
            with open(f"{base}/{e}/type") as f:
                kind = f.read().strip()
            with open(f"{base}/{e}/size") as f:
                size = f.read().strip()
        except OSError:
            continue
        if kind == "Instruction":
            continue
        mult = {"K": 2**10, "M": 2**20, "G": 2**30}.get(size[-1:], 1)
        try:
            n = int(size.rstrip("KMG")) * mult
        except ValueError:
            continue
        out[f"L{level}"] = max(out.get(f"L{level}", 0), n)
    return out


def cpu_flush_plan(sizes: dict[str, int] | None = None) -> tuple[int, str]:
    """Bytes to write before each CPU call, and what that flushes (see the module docstring)."""
    sizes = cpu_cache_sizes() if sizes is None else sizes
    if not sizes:
        return CPU_FLUSH_DEFAULT, f"cache sizes unknown; {CPU_FLUSH_DEFAULT >> 20} MiB written"
    llc_level = max(sizes, key=lambda k: int(k[1:]))
    llc = sizes[llc_level]
    if 2 * llc <= CPU_FLUSH_CAP:
        return 2 * llc, f"{llc_level} ({llc >> 20} MiB) flushed: {2 * llc >> 20} MiB written"
    return 0, (f"no flush: the {llc_level} of {llc >> 20} MiB (as reported) is too large to flush per call; "
               "between calls the other arms' traffic is all that evicts, and the copy roofline is timed the same way")


def make_cpu_flush(nbytes: int) -> Callable[[], None]:
    """A callable that writes ``nbytes`` (a fresh value each time, so nothing can be skipped); 0: a no-op."""
    if nbytes <= 0:
        return lambda: None
    buf = torch.empty(max(1, nbytes // 4), dtype=torch.int32)
    state = [0]

    def flush() -> None:
        state[0] = (state[0] + 1) & 0x7FFFFFFF
        buf.fill_(state[0])

    return flush


# --------------------------------------------------------------------------- host-clock timing

def _warm(arms: Sequence[Arm], flush: Callable[[], None], rounds: int, timer: Callable[[], float]) -> float:
    """Warm-up rounds; returns the wall time of the last one (prepare, flush and run of every arm)."""
    last = 0.0
    for k in range(rounds):
        t0 = timer()
        for arm in arms:
            _call(arm, arm.prepare, -1 - k)
            flush()
            _call(arm, arm.run, -1 - k)
        last = timer() - t0
    return last


def measure_loop(arms: Sequence[Arm], policy: Policy, *, flush: Callable[[], None] | None = None,
                 timer: Callable[[], float] = time.perf_counter, flush_bytes: int = 0,
                 method: str = "time.perf_counter loop") -> Timing:
    """Interleaved rounds timed with a host clock, until the noise target, ``max_rounds`` or the budget."""
    flush = flush or (lambda: None)
    samples: dict[str, list[float]] = {a.name: [] for a in arms}
    with _GcOff():
        _warm(arms, flush, policy.warmup_rounds, timer)
        start = time.perf_counter()
        reason = f"round cap ({policy.max_rounds})"
        for k in range(policy.max_rounds):
            for arm in arms:
                _call(arm, arm.prepare, k)
                flush()
                t0 = timer()
                _call(arm, arm.run, k)
                samples[arm.name].append(timer() - t0)
            n = k + 1
            if n >= policy.min_rounds and n % policy.check_every == 0 and _noise_met(samples, policy):
                reason = f"noise target {policy.max_noise:.0%} met"
                break
            if n >= policy.min_rounds and time.perf_counter() - start >= policy.budget_s:
                reason = f"time budget ({policy.budget_s:g} s)"
                break
        wall = time.perf_counter() - start
    return Timing(samples=samples, method=method, warmup_rounds=policy.warmup_rounds, flush_bytes=flush_bytes,
                  stop_reason=reason, wall_s=wall, max_noise=policy.max_noise)


def benchmark_unusable(benchmark: Any) -> str | None:
    """None when pytest-benchmark's fixture can time, else why not."""
    if benchmark is None:
        return "pytest-benchmark's fixture is not available"
    if getattr(benchmark, "disabled", False):
        return "pytest-benchmark is disabled (--benchmark-disable, or pytest-xdist is active)"
    if getattr(benchmark, "_mode", None):
        return "pytest-benchmark's fixture was already used in this test"
    return None


def measure_cpu(arms: Sequence[Arm], policy: Policy, *, benchmark: Any = None,
                flush: Callable[[], None] | None = None, flush_bytes: int = 0) -> Timing:
    """Time ``arms`` interleaved on the CPU: through ``benchmark.pedantic`` when it can, else ``measure_loop``."""
    why = benchmark_unusable(benchmark)
    if why is not None:
        if benchmark is not None and getattr(benchmark, "disabled", False) and not getattr(benchmark, "_mode", None):
            benchmark.pedantic(lambda: None)  # a disabled fixture runs it once and records nothing; used, it
            # does not warn "Benchmark fixture was not used at all in this test!"
        t = measure_loop(arms, policy, flush=flush, flush_bytes=flush_bytes,
                         method=f"time.perf_counter loop ({why})")
        t.notes.append(why)
        return t
    return _measure_pedantic(benchmark, arms, policy, flush or (lambda: None), flush_bytes)


def _measure_pedantic(benchmark: Any, arms: Sequence[Arm], policy: Policy, flush: Callable[[], None],
                      flush_bytes: int) -> Timing:
    timer: Callable[[], float] = getattr(benchmark, "_timer", None) or time.perf_counter
    *others, last = arms
    samples: dict[str, list[float]] = {a.name: [] for a in arms}
    counter = [0]

    def setup() -> None:
        k = counter[0]
        for arm in others:
            _call(arm, arm.prepare, k)
            flush()
            t0 = timer()
            _call(arm, arm.run, k)
            samples[arm.name].append(timer() - t0)
        _call(last, last.prepare, k)
        flush()
        counter[0] = k + 1

    def run_last() -> Any:
        return _call(last, last.run, counter[0] - 1)

    with _GcOff():
        round_wall = _warm(arms, flush, max(1, policy.warmup_rounds), time.perf_counter)
        rounds = policy.max_rounds if round_wall <= 0 else math.ceil(policy.budget_s / round_wall)
        rounds = max(policy.min_rounds, min(policy.max_rounds, rounds))
        start = time.perf_counter()
        benchmark.pedantic(run_last, setup=setup, rounds=rounds, warmup_rounds=0, iterations=1)
        wall = time.perf_counter() - start
    stats = getattr(benchmark, "stats", None)
    data = None if stats is None else getattr(getattr(stats, "stats", None), "data", None)
    if not data:  # a fixture that timed nothing (benchmark.stats None): time it ourselves
        t = measure_loop(arms, policy, flush=flush, flush_bytes=flush_bytes,
                         method="time.perf_counter loop (benchmark.stats was None after pedantic)")
        t.notes.append("benchmark.stats was None after benchmark.pedantic")
        return t
    samples[last.name] = [float(d) for d in data]
    name = getattr(timer, "__name__", "perf_counter")
    t = Timing(samples=samples, method=f"pytest-benchmark pedantic ({name}; {last.name} in its rounds, "
               f"{', '.join(a.name for a in others)} in its setup)", warmup_rounds=max(1, policy.warmup_rounds),
               flush_bytes=flush_bytes, stop_reason=f"{rounds} rounds sized to the {policy.budget_s:g} s budget",
               wall_s=wall, max_noise=policy.max_noise)
    return t


# the GPU path lives in bnverify.bench.gpu; re-exported so that one module names every timer
from bnverify.bench.gpu import (  # noqa: E402
    CROSSCHECK_AGREEMENT,
    CUDA_FLUSH_MIN,
    CudaEvents,
    crosscheck_do_bench,
    crosscheck_result,
    cuda_flush_bytes,
    cuda_unavailable_reason,
    make_cuda_flush,
    measure_cuda,
)

__all__ = ["CPU_FLUSH_CAP", "CPU_FLUSH_DEFAULT", "CROSSCHECK_AGREEMENT", "CUDA_FLUSH_MIN", "Arm", "ArmError",
           "CudaEvents", "Policy", "Timing", "benchmark_unusable", "cpu_cache_sizes", "cpu_flush_plan",
           "crosscheck_do_bench", "crosscheck_result", "cuda_flush_bytes", "cuda_unavailable_reason",
           "make_cpu_flush", "make_cuda_flush", "measure_cpu", "measure_cuda", "measure_loop"]

