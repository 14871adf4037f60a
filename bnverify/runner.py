"""Run the suites in-process and get the ``RunSummary`` back (used by the CLI and the meta-tests)."""

from __future__ import annotations

from typing import Any, Sequence

import pytest

from bnverify.plugin import SUMMARY_KEY
from bnverify.results import RunSummary


class _Capture:
    """A pytest plugin object that keeps the config, to read the summary after the run."""

    def __init__(self) -> None:
        self.config: pytest.Config | None = None

    def pytest_configure(self, config: pytest.Config) -> None:
        self.config = config


def run_pytest(args: Sequence[str], plugins: Sequence[Any] = ()) -> tuple[int, RunSummary | None]:
    """``pytest.main(args)``; returns its exit code and the bnverify summary (None if none was made)."""
    import sys

    cap = _Capture()
    saved = None
    if "hypothesis" in sys.modules:  # importing it here first would spoil pytest's assertion rewriting
        from hypothesis import core, settings

        saved = (settings.get_current_profile_name(), getattr(core, "global_force_seed", None))
    try:
        code = pytest.main(list(args), plugins=[cap, *plugins])
    finally:  # the run loads its own hypothesis profile and seed: give the caller's back
        if saved is not None:
            settings.load_profile(saved[0])
            core.global_force_seed = saved[1]
    summary = None
    if cap.config is not None:
        summary = cap.config.stash.get(SUMMARY_KEY, None)
    return int(code), summary


def check(
    target: str,
    *,
    kind: str | None = None,
    convention: str | None = None,
    reference: str | None = None,
    suites: Sequence[str] = (),
    tier: str = "quick",
    seed: int | None = 0,
    max_examples: int | None = None,
    tracking: bool = False,
    tracking_uri: str | None = None,
    extra: Sequence[str] = (),
    quiet: bool = True,
    shrink: bool = False,
    isolate: bool = False,
    timeout: float | None = None,
) -> tuple[int, RunSummary | None]:
    """Check ``target`` as ``bnverify check`` would, in this process (``isolate``: the checks in a worker
    process, ``bnverify.isolate``; this process never calls the target)."""
    args = ["--pyargs", "bnverify.suites", "--bn-target", target, "--bn-tier", tier,
            "-p", "no:cacheprovider", "-o", "addopts=", "-o", "filterwarnings=",
           "-W", "ignore::pytest.PytestAssertRewriteWarning", "-q", "--tb=no"]
    if quiet:
        args.append("--no-header")
    for flag, value in (("--bn-kind", kind), ("--bn-convention", convention), ("--bn-reference", reference),
                        ("--bn-seed", seed),
                        ("--bn-max-examples", max_examples), ("--bn-tracking-uri", tracking_uri),
                        ("--bn-timeout", timeout)):
        if value is not None:
            args += [flag, str(value)]
    for s in suites:
        args += ["--bn-suite", s]
    if not tracking:
        args.append("--bn-no-tracking")
    if not shrink:
        args.append("--bn-no-shrink")
    if isolate:
        args.append("--bn-isolate")
    args += list(extra)
    return run_pytest(args)
