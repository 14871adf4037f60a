"""The store warm-up worker: mlflow imported and the store opened while the checks run.

Importing mlflow and its SQL store costs about 2 s of CPU, and a fresh SQLite store needs
its schema migrated; done in the controller at the end, that is 5-10 % of a quick tier.
:func:`prepare` starts one worker process that does it in parallel, in a thread at low
priority (nice 10), then waits on a pipe for one request: the staged invocation
(``summary.json`` and ``artifacts/``), which it writes under the same rules as the
in-process path.  :func:`deliver` hands the write over and waits at most
``$BNVERIFY_TRACKING_TIMEOUT`` for the answer; past that the worker is killed and the
invocation is spooled.  A worker nobody hands a write to is killed when the controller
exits, and one whose controller died exits once its warm-up is done (its pipe closes).

The worker is a ``multiprocessing`` process started with ``spawn``, not ``fork``: the
controller has torch, pytest and possibly pytest-xdist's threads loaded, and a forked copy
of a threaded process can deadlock on a lock another thread held (Python 3.12+ warns about
it).  Measured, ``fork`` saved nothing visible: the worker's time goes into importing
mlflow and migrating the store, not into starting an interpreter (about 0.1 s).  ``spawn``
also starts multiprocessing's resource tracker, which ends with the controller, and imports
the controller's main module in the worker, which is why :func:`prepare` checks
:func:`_spawn_is_safe` first.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import sys
import sysconfig
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from bnverify.results import RunSummary
from bnverify.tracking.config import (
    ENV_TIMEOUT,
    describe_error,
    mlflow_available,
    resolve_experiment,
    resolve_tracking_uri,
    write_timeout,
)
from bnverify.tracking.store import Written, open_store, tracking_context, write_invocation

if TYPE_CHECKING:  # pragma: no cover - typing only
    from multiprocessing.connection import Connection

_log = logging.getLogger(__name__)

_START_METHOD: Final = "spawn"


class _WorkerUnavailable(Exception):
    """The worker cannot take the request (it never got it): write in-process instead."""


class _StoreError(Exception):
    """The worker tried and the store failed: spool."""


class _StoreWorker:
    """One warm-up worker process for one (store URI, experiment), and the pipe to it."""

    def __init__(self, uri: str, experiment: str) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context(_START_METHOD)
        self.conn, theirs = ctx.Pipe()
        self.proc = ctx.Process(
            target=_serve, args=(theirs, uri, experiment), name="bnverify-store-warm-up", daemon=True
        )
        try:
            self.proc.start()
        finally:
            theirs.close()

    def alive(self) -> bool:
        return self.proc.is_alive()

    def stop(self, grace: float = 0.0) -> None:
        """Wait up to ``grace`` seconds for the worker to end, then kill it; close the pipe."""
        if grace and self.alive():
            self.proc.join(grace)
        if self.alive():
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()

    def write(self, staging: Path, invocation_id: str, end_ms: int, timeout: float) -> Written:
        """Hand the staged invocation over; its parent run.  The worker ends either way."""
        grace = 0.0
        answer: tuple[bool, Any] | None = None
        try:
            if not self.alive():
                raise _WorkerUnavailable(f"the store warm-up worker exited early (exit code {self.proc.exitcode})")
            try:
                self.conn.send((str(staging), invocation_id, end_ms))
            except (OSError, ValueError) as e:
                raise _WorkerUnavailable(str(e)) from None
            if not self.conn.poll(timeout):  # also True when the worker died: then recv fails
                raise TimeoutError(f"the tracking store did not finish within {timeout:.0f} s (${ENV_TIMEOUT})")
            grace = 10.0  # it exits by itself once it has answered
            with contextlib.suppress(EOFError, OSError):
                answer = self.conn.recv()
        finally:
            self.stop(grace)
        if answer is None:
            raise _StoreError(f"the store warm-up worker exited without an answer (exit code {self.proc.exitcode})")
        ok, value = answer
        if not ok:
            raise _StoreError(str(value))
        return Written(*value)


_WORKERS: dict[tuple[str, str], _StoreWorker] = {}


def _stop_workers() -> None:
    while _WORKERS:
        _WORKERS.popitem()[1].stop()


atexit.register(_stop_workers)


def _spawn_is_safe() -> bool:
    """Whether a spawned worker starts without running the controller's main script again.

    ``spawn`` imports the parent's ``__main__`` in the child (multiprocessing's "safe
    importing of main module" rule).  That is harmless for ``python -m pytest`` and any
    ``python -m package`` (a package's ``__main__`` is skipped), for ``python -c`` and
    interactive sessions, and for the console scripts installers write (``bnverify``,
    ``pytest``: their code runs under ``if __name__ == "__main__"``).  A script of the user's
    that runs the checks at top level (``bnverify.runner.check`` or ``pytest.main`` without
    that guard) would run them again in the worker, which would then log a second run:
    there the write stays in the controller.
    """
    main = sys.modules.get("__main__")
    name = getattr(getattr(main, "__spec__", None), "name", None)
    if name is not None:
        return bool(name == "__main__" or name.endswith(".__main__"))
    path = getattr(main, "__file__", None)
    if not path:
        return True
    folder = Path(path).resolve().parent
    schemes = {sysconfig.get_default_scheme(), sysconfig.get_preferred_scheme("user")}
    return any(Path(sysconfig.get_path("scripts", scheme)).resolve() == folder for scheme in schemes)


def prepare(tracking_uri: str | None, experiment: str | None = None) -> bool:
    """Start importing mlflow and opening the store in a worker process; never raises.

    Call it once, early, in the process that will call
    :func:`~bnverify.tracking.invocation.log_invocation` (the pytest controller, never an
    xdist worker), with the same URI and experiment.  ``log_invocation`` then hands the
    write to that process, and the check's wall time pays only for the write itself.
    Without ``prepare`` everything still works, in the calling process.  Returns whether a
    worker was started (or one is already running for this store).
    """
    try:
        if not mlflow_available() or not _spawn_is_safe():
            return False
        uri = resolve_tracking_uri(tracking_uri)
        key = (uri, resolve_experiment(experiment))
        if key in _WORKERS and _WORKERS[key].alive():
            return True
        _WORKERS[key] = _StoreWorker(*key)
        return True
    except Exception as e:  # noqa: BLE001 - tracking never breaks a check
        _log.debug("bnverify tracking: prepare failed: %s", e)
        return False


def deliver(uri: str, experiment: str, summary: RunSummary, invocation_id: str, end_ms: int, staging: Path) -> Written:
    """Write a staged invocation: through the prepared worker if there is one, else here."""
    worker = _WORKERS.pop((uri, experiment), None)
    if worker is not None:
        try:
            return worker.write(staging, invocation_id, end_ms, write_timeout())
        except _WorkerUnavailable as e:
            _log.debug("bnverify tracking: warm-up worker unavailable (%s); logging in-process", e)
    with tracking_context():
        return write_invocation(uri, experiment, summary, invocation_id, end_ms, staging / "artifacts")


def _warm_up(uri: str, experiment: str) -> None:
    # niceness is per thread on Linux: only the warm-up yields to the checks, the write
    # itself (once the checks are done and the controller waits) runs at full speed
    with contextlib.suppress(Exception):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    try:
        with tracking_context(), open_store(uri, experiment, hold=False):
            pass
    except Exception as e:  # noqa: BLE001 - the real write meets the same problem and reports it
        _log.debug("bnverify tracking: warm-up failed: %s", e)


def _serve(conn: Connection, uri: str, experiment: str) -> None:
    """The worker process: warm up, then write the one invocation it is handed, if any."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # mlflow's and alembic's chatter stays off the check's output
    os.dup2(devnull, 2)
    # Ctrl-C is the controller's to handle: it still hands over the results, or kills this
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    warming = threading.Thread(target=_warm_up, args=(uri, experiment), name="bnverify-warm-up", daemon=True)
    warming.start()
    request: Any = None
    with contextlib.suppress(EOFError, OSError):  # EOF: the controller is gone or needs no write
        request = conn.recv()
    warming.join()
    if request is not None:
        try:
            staging, invocation_id, end_ms = request
            folder = Path(staging)
            summary = RunSummary.from_json((folder / "summary.json").read_text(encoding="utf-8"))
            with tracking_context():
                reply: tuple[bool, Any] = (
                    True,
                    tuple(write_invocation(uri, experiment, summary, str(invocation_id), int(end_ms), folder / "artifacts")),
                )
        except BaseException as e:  # noqa: BLE001 - the answer carries it
            reply = (False, describe_error(e))
        with contextlib.suppress(OSError):
            conn.send(reply)
    # everything is committed; skip the interpreter's teardown (mlflow's exit hooks take
    # a few hundred ms, and the controller waits for this process to end)
    os._exit(0)
