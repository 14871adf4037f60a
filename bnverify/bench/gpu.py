"""The GPU timer: CUDA events around each call, L2 flushed before it, on the caller's thread.

See ``bnverify.bench.timers`` (GPU) for the method and why: a host clock around an asynchronous
launch measures the launch, a warm L2 inflates bandwidth for shapes below its size, and a flush
enqueued before the start event keeps the GPU busy while the host enqueues the call, so launch
latency is not timed.  ``measure_cuda`` takes a ``backend`` so that its bookkeeping (interleaving,
milliseconds to seconds, batches, stopping) is tested without a GPU.
"""

from __future__ import annotations

import math
import threading
from contextlib import nullcontext
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

if TYPE_CHECKING:
    from bnverify.bench.timers import Arm, Policy, Timing

CUDA_FLUSH_MIN = 256 * 2**20
"""Smallest GPU flush buffer (bytes): triton's ``do_bench`` zeroes 256 MB; we take at least that."""

CROSSCHECK_AGREEMENT = 0.10
"""do_bench and the event timer are said to agree when their medians are within 10%."""


def cuda_flush_bytes(device: str | torch.device) -> int:
    l2 = int(getattr(torch.cuda.get_device_properties(torch.device(device)), "L2_cache_size", 0) or 0)
    return max(CUDA_FLUSH_MIN, 4 * l2)


def make_cuda_flush(device: str | torch.device, nbytes: int) -> Callable[[], None]:
    buf = torch.empty(nbytes // 4, dtype=torch.int32, device=device)

    def flush() -> None:
        buf.zero_()

    return flush


def cuda_unavailable_reason(device: str) -> str | None:
    """None when ``device`` is a usable CUDA device, else why the GPU path is skipped."""
    if not torch.cuda.is_available():
        built = torch.version.cuda or "no CUDA (a CPU-only build)"
        return f"CUDA is not available on this machine (torch {torch.__version__}, built with {built})"
    dev = torch.device(device)
    if dev.type != "cuda":
        return f"{device} is not a CUDA device"
    n = torch.cuda.device_count()
    if dev.index is not None and dev.index >= n:
        return f"{device} does not exist: {n} CUDA device(s)"
    return None


# --------------------------------------------------------------------------- CUDA events

class CudaEvents:
    """The event backend of ``measure_cuda``: CUDA events on the current stream, device-wide sync."""

    def __init__(self, device: str | torch.device) -> None:
        self.device = torch.device(device)

    def event(self) -> Any:
        return torch.cuda.Event(enable_timing=True)

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)


def measure_cuda(arms: Sequence[Arm], policy: Policy, *, device: str = "cuda",
                 flush: Callable[[], None] | None = None, flush_bytes: int | None = None,
                 backend: Any = None) -> Timing:
    """Interleaved rounds timed with CUDA events around each call, the cache flushed before each.

    ``backend`` (``event()`` -> an object with ``record()`` and ``elapsed_time(end)`` in ms;
    ``synchronize()``) defaults to ``CudaEvents``; the tests pass a fake one to check the
    bookkeeping without a GPU.  Everything runs on the calling thread.
    """
    from bnverify.bench.timers import Timing, _call, _GcOff, _noise_met

    owner = threading.get_ident()
    if backend is None:
        why = cuda_unavailable_reason(device)
        if why is not None:
            raise RuntimeError(why)
        backend = CudaEvents(device)
        if flush is None:
            flush_bytes = cuda_flush_bytes(device)
            flush = make_cuda_flush(device, flush_bytes)
    flush = flush or (lambda: None)
    samples: dict[str, list[float]] = {a.name: [] for a in arms}
    on_device = torch.cuda.device(torch.device(device)) if isinstance(backend, CudaEvents) else nullcontext()
    with _GcOff(), on_device:  # events and kernels on the current stream of ``device``
        for k in range(policy.warmup_rounds):
            for arm in arms:
                _call(arm, arm.prepare, -1 - k)
                flush()
                _call(arm, arm.run, -1 - k)
        backend.synchronize()
        start = time.perf_counter()
        reason = f"round cap ({policy.max_rounds})"
        done = 0
        while done < policy.max_rounds:
            batch = min(policy.check_every if done >= policy.min_rounds else policy.min_rounds,
                        policy.max_rounds - done)
            pending: list[tuple[str, Any, Any]] = []
            for k in range(done, done + batch):
                for arm in arms:
                    _call(arm, arm.prepare, k)
                    flush()
                    ev0, ev1 = backend.event(), backend.event()
                    ev0.record()
                    _call(arm, arm.run, k)
                    ev1.record()
                    pending.append((arm.name, ev0, ev1))
            backend.synchronize()
            for name, ev0, ev1 in pending:
                samples[name].append(float(ev0.elapsed_time(ev1)) / 1e3)
            done += batch
            if threading.get_ident() != owner:  # pragma: no cover - a guard, never expected
                raise RuntimeError("CUDA timing moved to another thread")
            if _noise_met(samples, policy):
                reason = f"noise target {policy.max_noise:.0%} met"
                break
            if time.perf_counter() - start >= policy.budget_s:
                reason = f"time budget ({policy.budget_s:g} s)"
                break
        wall = time.perf_counter() - start
    return Timing(samples=samples, method="CUDA events per call (torch.cuda.Event), L2 flushed before each call",
                  warmup_rounds=policy.warmup_rounds, flush_bytes=int(flush_bytes or 0), stop_reason=reason,
                  wall_s=wall, max_noise=policy.max_noise)


def crosscheck_do_bench(fn: Callable[[], Any], median_s: float, *,
                        grad_to_none: Sequence[torch.Tensor] | None = None) -> dict[str, Any]:
    """``triton.testing.do_bench``'s median for ``fn`` beside ours; never a verdict."""
    try:
        import triton.testing
    except Exception as exc:  # noqa: BLE001 - absent or broken triton: reported, not raised
        return {"available": False, "reason": f"triton is not importable ({type(exc).__name__})"}
    kw: dict[str, Any] = {"warmup": 25, "rep": 100}
    if grad_to_none:
        kw["grad_to_none"] = list(grad_to_none)
    try:
        try:
            ms = triton.testing.do_bench(fn, return_mode="median", **kw)
        except TypeError:  # older triton: quantiles instead of return_mode
            ms = triton.testing.do_bench(fn, quantiles=[0.5], **kw)
        if isinstance(ms, (list, tuple)):
            ms = ms[0]
    except Exception as exc:  # noqa: BLE001 - the cross-check is informative only
        return {"available": False, "reason": f"do_bench raised {type(exc).__name__}: {exc}"}
    return crosscheck_result(float(ms) / 1e3, median_s)


def crosscheck_result(do_bench_s: float, median_s: float) -> dict[str, Any]:
    """Agreement of a do_bench median with the event timer's: ratio and whether within ``CROSSCHECK_AGREEMENT``."""
    ratio = do_bench_s / median_s if median_s > 0 else float("nan")
    agree = bool(ratio > 0 and abs(math.log(ratio)) <= math.log1p(CROSSCHECK_AGREEMENT))
    return {"available": True, "do_bench_median_s": do_bench_s, "ratio": ratio, "agree": agree}
