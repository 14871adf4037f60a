"""Meta-tests of bnverify itself (not of any target)."""

from __future__ import annotations

import gc
import hashlib
import json
import os
from pathlib import Path
from typing import Any

# pytester's in-process runs restore sys.modules afterwards; extension modules first imported
# inside such a run would be imported a second time later, which numpy and torch do not allow.
# The same for bnverify's own modules: a second copy of them would hold classes that the first
# copy's except clauses do not recognise.
import numpy  # noqa: F401
import pytest
import torch  # noqa: F401
from _pytest.unraisableexception import gc_collect_iterations_key
from filelock import FileLock

import bnverify.diagnose  # noqa: F401
import bnverify.instances  # noqa: F401
import bnverify.runner  # noqa: F401
from bnverify.results import RunSummary

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]

# Everything imported so far (torch, numpy, pytest, bnverify: some 240,000 objects) lives as long as the
# test process: moved out of the collector's reach, each full collection then scans only what the tests
# made (0.2 s less per full collection in a process holding torch).
gc.freeze()


class _InlineRun:
    """Plugin for the meta-tests' in-process runs (``bnverify.runner``): no full garbage collection when
    the run ends, as pytester's inline runs do (``gc_collect_iterations_key`` = 0).

    pytest collects twice at the end of a session to report exceptions raised in finalisers; in a test
    process holding torch, numpy and hypothesis that is about 0.35 s of CPU per run, over the hundreds of
    runs the meta-tests make.  Finalisers that run during a check are still reported with that check, and
    no verdict depends on the final pass (the outer session still makes it when it ends)."""

    @pytest.hookimpl(tryfirst=True)
    def pytest_configure(self, config: pytest.Config) -> None:
        config.stash[gc_collect_iterations_key] = 0


_run_pytest = bnverify.runner.run_pytest


def _inline_run_pytest(args: Any, plugins: Any = ()) -> tuple[int, RunSummary | None]:
    return _run_pytest(args, plugins=[_InlineRun(), *plugins])


bnverify.runner.run_pytest = _inline_run_pytest


FIRST = ("tests/test_convergence_suite.py", "tests/test_optim_convergence.py", "tests/test_reproducibility.py",
         "tests/test_isolation.py", "tests/test_xdist_tracking.py", "tests/test_tracking.py",
         "tests/test_tracking_cli.py", "tests/test_broken_targets.py", "tests/test_init.py",
         "tests/test_false_failures.py")
"""Modules whose tests start first, in this order: the training studies (slow set: two take about two
minutes each), the tests that wait on subprocesses and real servers, then the longest in-process runs.
Under pytest-xdist a worker waiting on a server leaves its core to the other worker, and the many short
tests that follow fill the end of the run evenly instead of one worker finishing a long test alone."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return FIRST.index(path) if path in FIRST else len(FIRST)

    items.sort(key=rank)  # stable: the order within each module, and of the other modules, is kept


class CheckRuns:
    """``bnverify.runner.check`` run once per (target, options) in a test session, its result read by every
    test that asks for it.

    Several tests assert different things about one run (a gallery bug caught by its check, only by that
    family, with the expected cause): they share the run instead of repeating it.  Under pytest-xdist the
    workers share it too: the first to ask runs it under a file lock in the session's temporary folder
    (``folder``), the others wait for that lock and read the summary it wrote (``RunSummary.to_json``).
    Without xdist (``folder`` None) the results are kept in this process only.  Runs are made from the
    repository root, as a user would run ``bnverify check`` there.
    """

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self._memo: dict[str, tuple[int, RunSummary | None]] = {}

    def get(self, target: str, **options: Any) -> tuple[int, RunSummary | None]:
        """``check(target, **options)``, run on the first request of this session and kept."""
        key = json.dumps([target, sorted(options.items())], default=repr)
        if key not in self._memo:
            self._memo[key] = self._shared(key, target, options) if self.folder else self._run(target, options)
        return self._memo[key]

    def _shared(self, key: str, target: str, options: dict[str, Any]) -> tuple[int, RunSummary | None]:
        assert self.folder is not None
        path = self.folder / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"
        with FileLock(str(path) + ".lock"):
            if path.exists():
                saved = json.loads(path.read_text())
                summary = None if saved["summary"] is None else RunSummary.from_json(saved["summary"])
                return int(saved["code"]), summary
            code, summary = self._run(target, options)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"key": key, "code": code,
                                       "summary": None if summary is None else summary.to_json()}))
            tmp.replace(path)
            return code, summary

    def bug(self, bug: Any) -> tuple[int, RunSummary | None]:
        """The one run of a gallery ``Bug`` (``tests/gallery/registry*.py``): seed 0, the quick tier's examples,
        its own suites and convention, plus the forward and backward suites for the bugs that only the
        invariance suite may catch (``ONLY_INVARIANCE``: ``tests/test_invariance.py`` asserts they pass those)."""
        from tests.gallery.registry_invariance import ONLY_INVARIANCE

        suites = tuple(bug.suites)
        if bug.id in ONLY_INVARIANCE:
            suites += tuple(s for s in ("forward", "backward") if s not in suites)
        return self.get(bug.target, kind=bug.kind, suites=suites, seed=0, max_examples=BUG_EXAMPLES,
                        convention=getattr(bug, "convention", None))

    @staticmethod
    def _run(target: str, options: dict[str, Any]) -> tuple[int, RunSummary | None]:
        cwd = os.getcwd()
        os.chdir(REPO)
        try:
            return bnverify.runner.check(target, **options)
        finally:
            os.chdir(cwd)


BUG_EXAMPLES = 10
"""Examples per check in a gallery bug's run.  A fixed count (not the quick tier's, which the time budget
may cut on a slow or loaded machine) keeps each run the same on every machine; every bug is caught within
it at seed 0.  Correct targets get the tier's counts, over more seeds, in the false-failure sweep and the
soak."""


@pytest.fixture(scope="session")
def check_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> CheckRuns:
    """The session's shared ``CheckRuns`` (one folder for every xdist worker of this run)."""
    if not hasattr(request.config, "workerinput"):  # not an xdist worker
        return CheckRuns(None)
    folder = tmp_path_factory.getbasetemp().parent / "bnverify-check-runs"
    folder.mkdir(exist_ok=True)
    return CheckRuns(folder)


# Nothing a test runs may write into the repository (the user's directory, for a check): mlflow's
# fallback artifact root ./mlruns, a default store .bnverify/, pytest-benchmark's .benchmarks/.
_WRITTEN_BY_NO_ONE = ("mlruns", ".bnverify", "mlflow.db")
_PRESENT_AT_START: set[str] = set()


def pytest_sessionstart(session: pytest.Session) -> None:
    _PRESENT_AT_START.update(name for name in _WRITTEN_BY_NO_ONE if (REPO / name).exists())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if hasattr(session.config, "workerinput"):  # the controller looks once, after every worker
        return
    new = [name for name in _WRITTEN_BY_NO_ONE if name not in _PRESENT_AT_START and (REPO / name).exists()]
    if new:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"bnverify's tests wrote {', '.join(new)} into the repository ({REPO}): a test "
                                "ran a check or an MLflow call without a store or artifact root of its own",
                                red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
