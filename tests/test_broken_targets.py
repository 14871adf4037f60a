"""The gallery: every deliberately wrong batch norm must be failed, by the check meant to catch it.

A check that cannot fail is a defect.  Each ``Bug`` in ``tests/gallery/registry*.py`` names the
suite checks that must fail on it; this runs exactly those suites against it, as a user would.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest

import tests.gallery
from bnverify.runner import check
from tests.gallery.registry import Bug

REPO = Path(__file__).resolve().parents[1]


def all_bugs() -> list[Bug]:
    bugs: list[Bug] = []
    for info in pkgutil.iter_modules(tests.gallery.__path__):
        if not info.name.startswith("registry"):
            continue
        mod = importlib.import_module(f"tests.gallery.{info.name}")
        for name, value in vars(mod).items():
            if name.endswith("_BUGS") and isinstance(value, tuple):
                bugs.extend(b for b in value if isinstance(b, Bug))
    return bugs


BUGS = all_bugs()


def test_gallery_is_large_enough():
    assert len({b.id for b in BUGS}) == len(BUGS), "bug ids must be unique"
    assert len(BUGS) >= 15


@pytest.mark.parametrize("bug", BUGS, ids=lambda b: b.id)
def test_bug_is_caught(bug: Bug, monkeypatch):
    monkeypatch.chdir(REPO)
    extra = []
    convention = None
    if getattr(bug, "convention", None):
        convention = bug.convention
    code, summary = check(bug.target, kind=bug.kind, suites=bug.suites, seed=0, convention=convention,
                          extra=extra)
    assert summary is not None, f"no summary (exit {code})"
    failed = {r.check.split("[")[0] for r in summary.results if r.failed}
    missed = [c for c in bug.catches if c not in failed]
    assert not missed, (
        f"{bug.id} ({bug.bug_class}): {bug.description}\n"
        f"expected {missed} to fail; failed: {sorted(failed) or 'nothing'}"
    )
    assert code == 1
    # every failure explains itself: what was expected, and a tolerance or a reason
    for r in summary.results:
        if r.failed:
            assert r.message.strip(), f"{r.check} failed without a message"
