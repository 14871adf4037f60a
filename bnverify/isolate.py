"""``--isolate``: the checks run in a worker process that is replaced when the target kills it.

A target that segfaults, aborts or hangs inside native code takes down the process it runs in,
or holds it for ever: no time limit set in that process can stop a native call, and no report
survives a ``SIGSEGV``.  Under ``--isolate`` (``pytest --bn-isolate``) the suites run under
pytest-xdist with one worker process; this process (the controller) never calls the target.

In the worker, every guarded call (``bnverify.target.Watchdog.run``) is written to a small file
before it starts (which check, which kind of call, which input, when, its time limit), and
``faulthandler`` writes fatal signals to another file.  The controller watches the first file:

* a call still running ``native_hang_grace`` seconds past its limit (the alarm could not stop it:
  it is stuck in native code) is recorded and the worker is killed;
* when a worker dies, the check it was running fails with what killed it: the fatal signal
  (``SIGSEGV``, ``SIGABRT``, ``SIGBUS``, ...) and where, or the time limit, with the call and its
  input; the kind of call is *abandoned*: the replacement worker fails later calls of that kind at
  once, naming the first one, so a target that crashes or hangs on every eval forward costs one
  worker restart, not one per check, while its other kinds of call still run;
* every other check runs in the replacement worker and is reported and logged as usual (the
  controller is the only writer to MLflow, as in every pytest-xdist run).

The preflight (``bnverify.preflight``) runs in the first worker and is shared through a file, so
a replacement worker does not repeat it.
"""

from __future__ import annotations

import faulthandler
import json
import os
import re
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

import pytest

from bnverify.results import USER_PROPERTY_KEY

DIR_KEY = "bnverify_isolate_dir"
"""``workerinput`` key: the run's scratch folder shared by the controller and its workers."""

MAX_WORKER_RESTARTS = 24
"""Worker replacements before the run gives up (each abandons its kind of call, so a target has only
a few kinds to crash in; this bounds a target that crashes outside any guarded call)."""

POLL_S = 0.2
"""How often the controller looks at the workers' current calls."""

_RECORD_BYTES = 4096
_ABANDONED = "abandoned.jsonl"
_PREFLIGHT = "preflight.json"

_FATAL_SIGNALS = {
    "Segmentation fault": "SIGSEGV", "Aborted": "SIGABRT", "Bus error": "SIGBUS",
    "Floating-point exception": "SIGFPE", "Floating point exception": "SIGFPE", "Illegal instruction": "SIGILL",
}
_HARNESS_PATHS = ("/bnverify/", "/_pytest/", "/pluggy/", "/xdist/", "/execnet/", "/hypothesis/", "/torch/",
                  "/ctypes/", "/numpy/")


def requested(config: pytest.Config) -> bool:
    return bool(config.getoption("bn_isolate", default=False))


def is_worker(config: pytest.Config) -> bool:
    """This process is an isolation worker (it calls the target; the controller does not)."""
    return DIR_KEY in getattr(config, "workerinput", {})


def is_controller(config: pytest.Config) -> bool:
    """This process runs an isolated run and must never call the target itself."""
    return requested(config) and not hasattr(config, "workerinput")


def configure_cmdline(config: pytest.Config) -> None:
    """``--bn-isolate``: one pytest-xdist worker (unless ``-n`` says more) that is replaced when it dies."""
    if not requested(config) or hasattr(config, "workerinput"):
        return
    if not config.pluginmanager.has_plugin("xdist"):
        raise pytest.UsageError("bnverify: --isolate runs the checks in a pytest-xdist worker process, and "
                                "pytest-xdist is not loaded (installed with bnverify; was it disabled with "
                                "-p no:xdist?)")
    if not getattr(config.option, "numprocesses", None):  # what xdist's own cmdline_main does for -n 1
        config.option.numprocesses = 1
        if config.option.dist == "no":
            config.option.dist = "load"
        if not config.option.tx:
            config.option.tx = ["popen"]
    if getattr(config.option, "maxworkerrestart", None) is None:
        config.option.maxworkerrestart = MAX_WORKER_RESTARTS


def configure(config: pytest.Config, target: Any) -> None:
    """Register the controller's or the worker's side of isolation (called from the plugin's configure).

    A run in one process gets the end-of-run list of abandoned calls from its target's watchdog.
    """
    if is_worker(config):
        config.pluginmanager.register(_Worker(config, target), "bnverify-isolate-worker")
    elif is_controller(config):
        config.pluginmanager.register(_Controller(config, target), "bnverify-isolate-controller")
    elif not hasattr(config, "workerinput"):
        config.pluginmanager.register(_InProcess(target), "bnverify-abandoned-calls")


class _InProcess:
    """Without ``--isolate``: say at the end which kinds of call were abandoned, and how many calls."""

    def __init__(self, target: Any) -> None:
        self.target = target

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        wd = self.target.watchdog
        for kind, why in wd.abandoned.items():
            n = wd.not_called.get(kind, 0)
            terminalreporter.write_line(f"bnverify: abandoned calls: {kind} ({why}); {n} later call"
                                        f"{'' if n == 1 else 's'} failed without being made")


# --------------------------------------------------------------------------- worker

class _Worker:
    """Records each guarded call before it starts; runs (or reuses) the preflight; fatal signals to a file."""

    def __init__(self, config: pytest.Config, target: Any) -> None:
        self.config = config
        self.target = target
        self.dir = Path(config.workerinput[DIR_KEY])  # type: ignore[attr-defined]
        self.wid = str(config.workerinput["workerid"])  # type: ignore[attr-defined]
        self.fd = os.open(self.dir / f"calls-{self.wid}.json", os.O_RDWR | os.O_CREAT, 0o600)
        self.fatal: IO[str] | None = None
        self.item: dict[str, Any] = {}
        self.stack: list[dict[str, Any]] = []
        for rec in read_abandoned(self.dir):
            target.watchdog.abandon(rec["kind"], rec["why"])
        target.watchdog.monitor = self
        target.watchdog.backstop = False  # the controller stops a stuck call: it runs even if the GIL is held
        self._write()

    def _write(self) -> None:
        rec: dict[str, Any] = {"pid": os.getpid(), **self.item}
        if self.stack:
            rec.update(self.stack[-1])
        data = json.dumps(rec).encode()
        if len(data) > _RECORD_BYTES:
            rec["where"] = ""
            data = json.dumps(rec).encode()
        os.pwrite(self.fd, data.ljust(_RECORD_BYTES), 0)

    def begin(self, kind: str, where: str, limit: float | None) -> Any:
        self.stack.append({"kind": kind, "where": where, "start": time.time(), "limit": limit})
        self._write()
        return len(self.stack)

    def end(self, token: Any) -> None:
        del self.stack[int(token) - 1:]
        self._write()

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        # After every plugin's configure, pytest's own faulthandler (to stderr) included: a fatal signal's
        # report goes to the run's folder, where the controller reads it, never to the user's terminal.
        self.fatal = open(self.dir / f"fatal-{self.wid}.txt", "w")  # noqa: SIM115 - open while the worker lives
        faulthandler.enable(file=self.fatal)
        from bnverify.plugin import PREFLIGHT_KEY
        from bnverify.preflight import Step

        path = self.dir / _PREFLIGHT
        if path.exists():
            steps = [Step(s["name"], s["error"], tuple(s["blocks"])) for s in json.loads(path.read_text())]
        else:
            self.item = {"nodeid": None, "check": "preflight"}
            self._write()
            run = self.target.family.preflight
            steps = run(self.target, self.config.getoption("bn_device")) if run else []
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps([asdict(s) for s in steps]))
            os.replace(tmp, path)
            self.item = {}
            self._write()
        self.config.stash[PREFLIGHT_KEY] = steps

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> None:
        m = item.get_closest_marker("bnverify_suite")
        self.item = {"nodeid": item.nodeid, "suite": m.args[0] if m else None,
                     "check": item.originalname if isinstance(item, pytest.Function) else item.name}
        self._write()

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        self.target.watchdog.monitor = None
        os.close(self.fd)


# --------------------------------------------------------------------------- controller

def read_abandoned(folder: Path) -> list[dict[str, Any]]:
    path = folder / _ABANDONED
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_bytes().decode(errors="replace").strip()
        return json.loads(text) if text else None
    except (OSError, ValueError):  # gone, or read while being rewritten: the next look sees it whole
        return None


def fatal_signal(text: str) -> tuple[str | None, str]:
    """``("SIGSEGV", " at mypkg/bn.py:42 in forward")`` from a faulthandler report ((None, "") when empty)."""
    m = re.search(r"Fatal Python error: ([^\n]+)", text)
    if not m:
        return None, ""
    desc = m.group(1).strip()
    name = _FATAL_SIGNALS.get(desc)
    sig = f"{name} ({desc.lower()})" if name else desc
    where = ""
    for fm in re.finditer(r'File "([^"]+)", line (\d+) in (\S+)', text):
        path = fm.group(1).replace("\\", "/")
        if "/tests/" in path or not any(h in path for h in _HARNESS_PATHS) and not path.startswith(sys.prefix):
            where = f" at {fm.group(1)}:{fm.group(2)} in {fm.group(3)}"
            break
    return sig, where


class _Controller:
    """Sends workers the run's folder, stops stuck calls, names why a worker died, reports abandoned calls."""

    def __init__(self, config: pytest.Config, target: Any) -> None:
        from bnverify.target import native_hang_grace

        self.config = config
        self.target = target
        self.dir = Path(tempfile.mkdtemp(prefix="bnverify-isolate-"))
        self.grace = native_hang_grace
        self.killed: dict[int, str] = {}  # pid -> what the controller stopped it for
        self.crashes: dict[str, tuple[str, dict[str, Any]]] = {}  # nodeid -> why its worker died, its record
        self.events: list[str] = []
        self.abandoned_checks = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="bnverify-isolate", daemon=True)
        self._thread.start()

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput[DIR_KEY] = str(self.dir)

    def _watch(self) -> None:
        while not self._stop.wait(POLL_S):
            for path in self.dir.glob("calls-*.json"):
                rec = _read_record(path)
                if not rec or not rec.get("kind") or not rec.get("limit") or rec["pid"] in self.killed:
                    continue
                elapsed = time.time() - float(rec["start"])
                limit = float(rec["limit"])
                if elapsed < limit + self.grace(limit):
                    continue
                self.killed[rec["pid"]] = (f"did not return within {limit:g} s (--timeout) and the time limit could "
                                           f"not interrupt it (it hangs inside native code); its worker process was "
                                           f"stopped after {elapsed:.1f} s and replaced")
                try:
                    os.kill(int(rec["pid"]), signal.SIGKILL)
                except OSError:
                    pass

    def pytest_testnodedown(self, node: Any, error: object | None) -> None:
        if error is None:
            return
        wid = str(node.gateway.id)
        rec = _read_record(self.dir / f"calls-{wid}.json") or {}
        try:
            fatal = (self.dir / f"fatal-{wid}.txt").read_text(errors="replace")
        except OSError:
            fatal = ""
        sig, at = fatal_signal(fatal)
        stopped = self.killed.get(int(rec.get("pid", -1)))
        name = self.target.name
        kind = rec.get("kind")
        on = f" on {rec['where']}" if rec.get("where") else ""
        if stopped:
            what = f"{name} {kind}{on} {stopped}"
            why = f"one hung earlier inside native code ({kind}{on}, stopped after its {rec.get('limit'):g} s limit)"
        elif sig:
            call = f"{name} {kind}{on}" if kind else f"{name} (outside any guarded call into it)"
            what = f"{call} crashed the process with {sig}{at}; its worker process was replaced"
            why = f"one crashed the process earlier with {sig}{at} ({kind}{on})"
        else:
            call = f"{name} {kind}{on}" if kind else "the check"
            what = (f"the worker process died during {call} without a fatal-signal report (killed from outside, "
                    "for example by the out-of-memory killer, or the target exited the process); it was replaced")
            why = f"one ended the process earlier ({kind}{on})"
        if kind:
            what += f"; later {kind} calls are abandoned (failed without being made), other calls still run"
            with open(self.dir / _ABANDONED, "a") as fh:
                fh.write(json.dumps({"kind": kind, "why": why}) + "\n")
        nodeid = rec.get("nodeid")
        if nodeid:
            self.crashes[nodeid] = (what, rec)
            self.events.append(f"{rec.get('check')}: {what}")
        else:  # the preflight: the replacement's preflight fails that step at once, naming this
            self.events.append(f"preflight: {what}")
        for p in (self.dir / f"calls-{wid}.json", self.dir / f"fatal-{wid}.txt"):
            p.unlink(missing_ok=True)

    @pytest.hookimpl(tryfirst=True)
    def pytest_handlecrashitem(self, crashitem: str, report: pytest.TestReport, sched: Any) -> bool:
        """The crashed check fails with what killed its worker; bnverify's summary and MLflow see it."""
        what, rec = self.crashes.get(crashitem, (f"the worker process died while running {crashitem}", {}))
        suite = rec.get("suite") or _suite_from_nodeid(crashitem)
        report.when = "call"
        report.longrepr = what
        data = {"suite": suite, "check": rec.get("check") or crashitem.split("::")[-1], "message": what}
        report.user_properties = [(USER_PROPERTY_KEY, data)]
        return True

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.failed and "calls are abandoned, one" in str(report.longrepr):
            self.abandoned_checks += 1

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """The workers' preflight becomes this run's (the summary reports its failed steps)."""
        from bnverify.plugin import PREFLIGHT_KEY
        from bnverify.preflight import Step

        path = self.dir / _PREFLIGHT
        if path.exists():
            self.config.stash[PREFLIGHT_KEY] = [Step(s["name"], s["error"], tuple(s["blocks"]))
                                                for s in json.loads(path.read_text())]

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        for line in self.lines():
            terminalreporter.write_line(line)

    def lines(self) -> list[str]:
        """What the isolation did: each worker replaced and why, the kinds of call abandoned."""
        out = [f"bnverify: --isolate: worker replaced after {e}" for e in self.events]
        kinds = [r["kind"] for r in read_abandoned(self.dir)]
        if kinds:
            out.append(f"bnverify: --isolate: abandoned calls: {', '.join(kinds)} ({self.abandoned_checks} "
                       "checks failed without calling them again)")
        return out

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        self._stop.set()
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)


def _suite_from_nodeid(nodeid: str) -> str | None:
    """The suite of a check the controller never collected: its module's ``bnverify_suite`` marker."""
    module = nodeid.split("::")[0].removesuffix(".py").replace("/", ".")
    idx = module.find("bnverify.suites.")
    if idx < 0 and "suites." in module:
        module = "bnverify.suites." + module.split("suites.", 1)[1]
    elif idx > 0:
        module = module[idx:]
    try:
        import importlib

        mod = importlib.import_module(module)
    except ImportError:
        return None
    for mark in getattr(mod, "pytestmark", []) if isinstance(getattr(mod, "pytestmark", []), list) else []:
        if mark.name == "bnverify_suite":
            return str(mark.args[0])
    return None
