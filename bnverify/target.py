"""What every loaded target has, whatever its family: identity, convention, and guarded calls.

A ``Target`` is what ``bnverify.loading.load_target`` returns: the user's object, the kind it
was loaded as (and whether that was detected or named with ``--kind``), the convention and
reference it is held to, and ``call``, through which every call into user code goes.  Families
subclass it (``bnverify.adapter.BNTarget`` for batch norm, ``DropoutTarget`` for dropout) to add
how instances are built.

``call`` turns misbehaviour into a failed check, never a traceback from deep inside the
harness: an exception becomes ``TargetError`` quoting the target's own message and file:line and
naming the input it was given (shape and dtype; an out-of-memory error is named as such); a call
that does not return within ``call_timeout`` seconds becomes ``TargetError`` too.  Hangs are
counted per *kind of call* (training forward, eval forward, backward, ...): after one call of a
kind hung, later calls of that kind fail at once, saying which call hung and on what input, while
the other kinds still run.  ``NotSupported`` marks a feature the target does not offer: the check
is skipped with that reason.

A hang inside native code (a C extension waiting on something that never comes) cannot be
interrupted in this process.  Under ``--isolate`` (``bnverify.isolate``) the checks run in a worker
process that is replaced when it crashes or hangs; without it, a call still stuck
``native_hang_grace`` seconds after its time limit stops the run with exit code 1 and a message
naming the call, instead of waiting for ever.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

DEFAULT_CALL_TIMEOUT_S = 60.0
"""Seconds one call into the target may take before it counts as hung (``--timeout``)."""

NATIVE_HANG_GRACE_MIN_S = 2.0
NATIVE_HANG_GRACE_MAX_S = 30.0


def native_hang_grace(timeout: float) -> float:
    """Seconds past its time limit after which a call that the alarm did not stop counts as stuck in native code.

    The alarm stops Python code at the limit itself; native code that returns late is stopped as soon as
    it returns.  Half the limit (at least 2 s, at most 30 s) leaves a slow native call room to come back
    and be reported as too slow, while a call that never comes back is abandoned within 1.5 times the limit.
    """
    return min(NATIVE_HANG_GRACE_MAX_S, max(NATIVE_HANG_GRACE_MIN_S, 0.5 * timeout))


class NotSupported(Exception):
    """The target does not offer this feature; the check is skipped with this reason."""


class TargetError(AssertionError):
    """The target misbehaved (raised, hung, returned garbage): the check fails with this message."""


class CallAbandoned(TargetError):
    """A call that hung (or crashed its worker process), or was not made because one of its kind did earlier."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class TargetLoadError(Exception):
    """The target could not be loaded or its kind not determined: a usage error (exit 2)."""


class _Timeout(BaseException):
    """Raised inside a target call by the alarm; a BaseException so the target cannot swallow it easily."""


def describe_input(fn: Callable[[], Any]) -> str:
    """``input shape (8, 3, 4, 4) float32``: the largest tensor or array a call closes over, or "".

    Every guarded call is a closure over what it passes to the target (``lambda: module(x)``,
    ``lambda: out.backward(dout)``); the largest tensor among them is the input.  Only torch tensors
    and numpy arrays are looked at (their shape and dtype are plain attributes: no user code runs).
    """
    best: Any = None
    best_n = -1
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            v = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        mod = type(v).__module__
        if not (mod.startswith("torch") or mod.startswith("numpy")) or not hasattr(v, "shape"):
            continue
        try:
            shape = tuple(int(d) for d in v.shape)
        except (TypeError, ValueError):
            continue
        n = 1
        for d in shape:
            n *= d
        if n > best_n:
            best, best_n = v, n
    if best is None:
        return ""
    dtype = str(best.dtype).removeprefix("torch.")
    device = getattr(best, "device", None)
    on = f" on {device}" if device is not None and str(device) != "cpu" else ""
    return f"input shape {tuple(int(d) for d in best.shape)} {dtype}{on}"


def is_out_of_memory(exc: BaseException) -> bool:
    """``torch.cuda.OutOfMemoryError`` (or an allocator's "out of memory" RuntimeError/MemoryError)."""
    if type(exc).__name__ in ("OutOfMemoryError", "MemoryError"):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


class CallMonitor(Protocol):
    """Told about each guarded call before it starts and after it ends (``bnverify.isolate``'s worker).

    ``begin`` must persist what it is told at once (a crash may follow); it returns a token for ``end``.
    """

    def begin(self, kind: str, where: str, limit: float | None) -> Any: ...

    def end(self, token: Any) -> None: ...


class _Backstop:
    """One daemon thread per process: stops the run when a call outlives its limit plus the grace.

    The alarm cannot interrupt a native call; this thread (it runs whenever the native code releases
    the GIL, as ctypes calls and torch operations do) then prints which call is stuck, on what input,
    and exits with status 1, so that the run ends instead of hanging.  ``--isolate`` reports such a call
    as one failed check and runs the others.
    """

    _instance: _Backstop | None = None

    def __init__(self) -> None:
        self.deadline: tuple[float, str, float] | None = None  # (monotonic deadline, what, limit)
        threading.Thread(target=self._watch, name="bnverify-backstop", daemon=True).start()

    @classmethod
    def get(cls) -> _Backstop:
        if cls._instance is None:
            cls._instance = _Backstop()
        return cls._instance

    def _watch(self) -> None:
        while True:
            time.sleep(0.25)
            d = self.deadline
            if d is None or time.monotonic() < d[0]:
                continue
            deadline, what, limit = d
            waited = limit + native_hang_grace(limit) + (time.monotonic() - deadline)
            try:
                os.write(2, (
                    f"\nbnverify: {what} has not returned for {waited:.0f} s and the time limit ({limit:g} s, "
                    "--timeout) cannot interrupt it: it hangs inside native code.  The run stops here (exit 1); "
                    "with --isolate that check fails, naming the call, and the other checks run.\n").encode())
            finally:
                os._exit(1)


class Watchdog:
    """Bounds the time of each call into the target, so that a hang becomes a failed check.

    On the main thread of a POSIX process an interval timer (``SIGALRM``)
    interrupts the call: no extra thread, no measurable overhead.  It stops
    Python-level loops, sleeps and waits; a hang inside one native call is
    interrupted when that call returns to Python (one that never returns is
    left to ``_Backstop`` or, under ``--isolate``, to the controller).
    Elsewhere (worker threads, Windows) the call runs on a helper thread and is
    abandoned after the timeout.

    Hangs are kept per kind of call: once a call of one kind hung, later calls
    of that kind fail at once (``abandoned``, with the reason; ``not_called``
    counts them), other kinds still run.
    """

    def __init__(self) -> None:
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.abandoned: dict[str, str] = {}
        """Kind of call -> why its calls are no longer made ("one hung earlier (...)")."""
        self.not_called: dict[str, int] = {}
        """Kind of call -> how many calls were abandoned without being made."""
        self.monitor: CallMonitor | None = None
        self.backstop = True
        """Stop the process when a call outlives its limit plus the grace (off under ``--isolate``)."""
        self.hung: str | None = None
        """Set when the latest call hung or was abandoned (why), None when it returned or raised: a caller
        that caught ``TargetError`` tells a hang from the target's own error by it."""

    def abandon(self, kind: str, why: str) -> None:
        """Make later calls of ``kind`` fail at once with ``why`` (e.g. "one hung earlier (...)")."""
        self.abandoned.setdefault(kind, why)

    def run(self, fn: Callable[[], Any], timeout: float | None, what: str = "the target",
            kind: str = "guarded call") -> Any:
        """``fn()`` within ``timeout`` seconds; ``what`` names the call in messages, ``kind`` groups hangs."""
        self.hung = self.abandoned.get(kind)
        if self.hung is not None:
            self.not_called[kind] = self.not_called.get(kind, 0) + 1
            raise CallAbandoned(f"{what} not called: {kind} calls are abandoned, {self.abandoned[kind]}", kind)
        monitor = self.monitor
        token = monitor.begin(kind, describe_input(fn), timeout) if monitor is not None else None
        try:
            if timeout is None or timeout <= 0:
                return fn()
            if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
                return self._run_alarm(fn, timeout, what, kind)
            return self._run_thread(fn, timeout, what, kind)
        finally:
            if monitor is not None:
                monitor.end(token)

    def _hang(self, fn: Callable[[], Any], timeout: float, what: str, kind: str) -> CallAbandoned:
        where = describe_input(fn)
        at = f" on {where}" if where else ""
        self.abandon(kind, f"one hung earlier (no return within {timeout:g} s{at})")
        self.hung = self.abandoned[kind]
        return CallAbandoned(
            f"{what} did not return within {timeout:g} s (--timeout){at}: it hangs or is far too slow; "
            f"later {kind} calls are abandoned (failed without being made), other calls still run", kind)

    def _run_alarm(self, fn: Callable[[], Any], timeout: float, what: str, kind: str) -> Any:
        def on_alarm(signum: int, frame: Any) -> None:
            raise _Timeout()

        backstop = _Backstop.get() if self.backstop and self.monitor is None else None
        saved = backstop.deadline if backstop is not None else None
        if backstop is not None:
            where = describe_input(fn)
            backstop.deadline = (time.monotonic() + timeout + native_hang_grace(timeout),
                                 f"{what} ({kind}{', ' + where if where else ''})", timeout)
        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            return fn()
        except _Timeout:
            raise self._hang(fn, timeout, what, kind) from None
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            if backstop is not None:
                backstop.deadline = saved

    def _run_thread(self, fn: Callable[[], Any], timeout: float, what: str, kind: str) -> Any:
        import torch

        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="bnverify-target")
        pool = self._pool
        grad_enabled = torch.is_grad_enabled()

        def call() -> Any:
            with torch.set_grad_enabled(grad_enabled):
                return fn()

        fut = pool.submit(call)
        try:
            return fut.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)
            raise self._hang(fn, timeout, what, kind) from None


def summarise_exception(exc: BaseException) -> str:
    """``ValueError: msg (at mypkg/bn.py:42 in forward)``: the innermost frame outside the harness."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = ""
    for fr in reversed(frames):
        if "/bnverify/" not in fr.filename.replace("\\", "/") or "/tests/" in fr.filename:
            where = f" (at {fr.filename}:{fr.lineno} in {fr.name})"
            break
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {msg}{where}"


@dataclass
class Target:
    """A loaded target of any family.

    ``convention`` is the family's convention object (it has a ``name``); ``reference`` names the
    reference it is held to where the family has a choice (``--reference``); ``kind_detected`` is
    False when the kind was named with ``--kind`` (so a reproduce command must name it too).
    """

    name: str
    kind: str
    obj: Any
    convention: Any
    spec: str = ""
    version: str = ""
    source_file: str | None = None
    call_timeout: float | None = DEFAULT_CALL_TIMEOUT_S
    reference: str | None = None
    kind_detected: bool = True
    watchdog: Watchdog = field(default_factory=Watchdog, repr=False)
    _mode: str = field(default="", init=False, repr=False)

    @property
    def family(self) -> Any:
        """The ``bnverify.families.Family`` this target's kind belongs to."""
        from bnverify.families import family_of_kind

        return family_of_kind(self.kind)

    def call(self, what: str, fn: Callable[[], Any], kind: str | None = None) -> Any:
        """Run user code; turn any misbehaviour into ``TargetError`` naming ``what`` and the input.

        ``kind`` groups calls for hang handling (default: ``what``, with "forward" split into
        "training forward" and "eval forward" by the last ``train()``/``eval()`` call).
        """
        kind = kind or self._kind_of(what)
        try:
            return self.watchdog.run(fn, self.call_timeout, what=f"{self.name} {what}", kind=kind)
        except (TargetError, NotSupported):
            raise
        except Exception as exc:  # the target's own failure, reported as such
            where = describe_input(fn)
            if is_out_of_memory(exc):
                raise TargetError(f"{self.name} {what} ran out of memory on {where or 'its input'}: "
                                  f"{summarise_exception(exc)}") from exc
            on = f"; {where}" if where else ""
            raise TargetError(f"{self.name} {what} raised {summarise_exception(exc)}{on}") from exc

    def _kind_of(self, what: str) -> str:
        if what in ("train()", "eval()"):
            self._mode = "training" if what == "train()" else "eval"
        elif what == "forward" and self._mode:
            return f"{self._mode} forward"
        return what

    def reproduce_flags(self) -> list[str]:
        """The ``bnverify check`` flags that reload this target as it was loaded here."""
        flags: list[str] = []
        if not self.kind_detected:
            flags += ["--kind", self.kind]
        fam = self.family
        if self.convention is not None:
            base = getattr(self.convention, "base", "") or self.convention.name  # a composed convention's named one
            if base != fam.default_convention(self.kind):
                flags += ["--convention", base]
            flags += list(getattr(self.convention, "aspect_flags", ()))  # e.g. --running-var biased
        if self.reference is not None and self.reference != fam.infer_reference(self.obj, self.kind):
            flags += ["--reference", self.reference]
        return flags
