"""What every loaded target has, whatever its family: identity, convention, and guarded calls.

A ``Target`` is what ``bnverify.loading.load_target`` returns: the user's object, the kind it
was loaded as (and whether that was detected or named with ``--kind``), the convention and
reference it is held to, and ``call``, through which every call into user code goes.  Families
subclass it (``bnverify.adapter.BNTarget`` for batch norm, ``DropoutTarget`` for dropout) to add
how instances are built.

``call`` turns misbehaviour into a failed check, never a traceback from deep inside the
harness: an exception becomes ``TargetError`` quoting the target's own message and file:line; a
call that does not return within ``call_timeout`` seconds becomes ``TargetError`` too, and the
target is then marked as hung so later calls fail at once instead of waiting again.
``NotSupported`` marks a feature the target does not offer: the check is skipped with that reason.
"""

from __future__ import annotations

import concurrent.futures
import signal
import threading
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

DEFAULT_CALL_TIMEOUT_S = 60.0
"""Seconds one call into the target may take before it counts as hung (``--timeout``)."""


class NotSupported(Exception):
    """The target does not offer this feature; the check is skipped with this reason."""


class TargetError(AssertionError):
    """The target misbehaved (raised, hung, returned garbage): the check fails with this message."""


class TargetLoadError(Exception):
    """The target could not be loaded or its kind not determined: a usage error (exit 2)."""


class _Timeout(BaseException):
    """Raised inside a target call by the alarm; a BaseException so the target cannot swallow it easily."""


class Watchdog:
    """Bounds the time of each call into the target, so that a hang becomes a failed check.

    On the main thread of a POSIX process an interval timer (``SIGALRM``)
    interrupts the call: no extra thread, no measurable overhead.  It stops
    Python-level loops, sleeps and waits; a hang inside one native call is
    interrupted when that call returns to Python.  Elsewhere (worker threads,
    Windows) the call runs on a helper thread and is abandoned after the
    timeout.  A target that timed out once is marked as hung: later calls fail
    at once instead of waiting again.
    """

    def __init__(self) -> None:
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.hung: str | None = None

    def run(self, fn: Callable[[], Any], timeout: float | None) -> Any:
        if self.hung:
            raise TargetError(f"the target hung earlier ({self.hung}); not called again")
        if timeout is None or timeout <= 0:
            return fn()
        if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
            return self._run_alarm(fn, timeout)
        return self._run_thread(fn, timeout)

    def _hang(self, timeout: float) -> TargetError:
        self.hung = f"no answer within {timeout:g} s"
        return TargetError(
            f"the target did not return within {timeout:g} s (--bn-timeout): it hangs or is far too slow"
        )

    def _run_alarm(self, fn: Callable[[], Any], timeout: float) -> Any:
        def on_alarm(signum: int, frame: Any) -> None:
            raise _Timeout()

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            return fn()
        except _Timeout:
            raise self._hang(timeout) from None
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    def _run_thread(self, fn: Callable[[], Any], timeout: float) -> Any:
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
            raise self._hang(timeout) from None


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

    @property
    def family(self) -> Any:
        """The ``bnverify.families.Family`` this target's kind belongs to."""
        from bnverify.families import family_of_kind

        return family_of_kind(self.kind)

    def call(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run user code; turn any misbehaviour into ``TargetError`` naming ``what``."""
        try:
            return self.watchdog.run(fn, self.call_timeout)
        except (TargetError, NotSupported):
            raise
        except Exception as exc:  # the target's own failure, reported as such
            raise TargetError(f"{self.name} {what} raised {summarise_exception(exc)}") from exc

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
