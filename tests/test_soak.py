"""The 50-seed soak: correct batch norms never fail the quick tier, on any of 50 hypothesis seeds.

Deselected by default (marker ``soak``); run it with

    .venv/bin/python -m pytest -m soak tests/test_soak.py -p no:randomly

Each correct target runs the quick tier (every suite its kind supports, as ``bnverify check``
runs it) with ``--bn-seed s`` for s in 0..49 and the quick tier's examples per check.  A
failure of any check on any seed fails the target's test, with the seed and the check's first
line (rerun it with ``bnverify check TARGET --seed s``).  At the end of the module a table gives,
per target: runs, checks, failures, the worst err/tol seen (the largest error over tolerance of
any passing comparison: how close a correct implementation comes to a false failure) and the
time.  ``BNVERIFY_SOAK_SEEDS`` (a number) shortens the soak for a trial run.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from bnverify import tables
from bnverify.runner import check
from tests.gallery.registry_modes import CORRECT_CONVENTIONS

pytestmark = pytest.mark.soak

REPO = Path(__file__).resolve().parents[1]
SEEDS = range(int(os.environ.get("BNVERIFY_SOAK_SEEDS", "50")))
MAX_EXAMPLES = 10
"""The quick tier's examples per check (its hypothesis profile, ``bnverify-dev``)."""


def _targets() -> list[tuple[str, str | None, str | None]]:
    """(target, kind, convention): the built-in correct ones, the numpy cs231n module, the other conventions."""
    out: list[tuple[str, str | None, str | None]] = [
        ("torch", None, None),
        ("torch.nn.functional:batch_norm", None, None),
        ("reference", None, None),
        ("tests.gallery.correct:Cs231nBatchNorm", "numpy-cs231n", None),
    ]
    seen = {(t, k, c or "torch") for t, k, c in out}
    for t, k, c in CORRECT_CONVENTIONS:
        if (t, k, c) not in seen:
            seen.add((t, k, c))
            out.append((t, k, c))
    return out


TARGETS = _targets()


def _id(t: tuple[str, str | None, str | None]) -> str:
    target, kind, convention = t
    return target.rsplit(":", 1)[-1] + (f"-{kind}" if kind else "") + (f"-{convention}" if convention else "")


@pytest.fixture(scope="module")
def soak_rows(request) -> Any:
    rows: dict[str, list[Any]] = {}
    yield rows
    if not rows:
        return
    text = tables.table(
        [rows[_id(t)] for t in TARGETS if _id(t) in rows],
        ["target", "kind", "convention", "seeds", "checks", "failures", "worst err/tol", "seconds", "s/seed"],
        align=["left"] * 3 + ["right"] * 6,
    )
    title = f"soak: quick tier, {len(SEEDS)} seeds x {MAX_EXAMPLES} examples per check"
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if capture is not None and reporter is not None:
        with capture.global_and_fixture_disabled():  # the table is the soak's output: show it
            reporter.write_line("")
            for line in [title, *text.splitlines()]:
                reporter.write_line(line)
    else:  # pragma: no cover - without pytest's terminal, plain stdout
        print(f"\n{title}\n{text}")


@pytest.mark.parametrize("spec", TARGETS, ids=[_id(t) for t in TARGETS])
def test_correct_target_never_fails_the_quick_tier(spec, soak_rows, monkeypatch):
    target, kind, convention = spec
    monkeypatch.chdir(REPO)
    failures: list[str] = []
    worst = 0.0
    checks = 0
    t0 = time.perf_counter()
    for seed in SEEDS:
        code, summary = check(target, kind=kind, convention=convention, seed=seed, max_examples=MAX_EXAMPLES)
        if summary is None:
            failures.append(f"seed {seed}: no summary, exit {code}")
            continue
        checks += len(summary.results)
        for r in summary.results:
            if r.failed:
                first = r.message.splitlines()[0] if r.message else ""
                failures.append(f"seed {seed} {r.suite}/{r.check}: {first}")
            elif r.worst_ratio is not None and r.worst_ratio > worst:
                worst = float(r.worst_ratio)
        if code not in (0, 1):
            failures.append(f"seed {seed}: exit {code}")
        assert sum(r.outcome == "passed" for r in summary.results) > 0, f"seed {seed}: nothing passed"
    seconds = time.perf_counter() - t0
    soak_rows[_id(spec)] = [target, kind or "", convention or "torch", len(SEEDS), checks, len(failures),
                            f"{worst:.3f}", f"{seconds:.0f}", f"{seconds / max(1, len(SEEDS)):.1f}"]
    assert not failures, f"{len(failures)} failure(s) of a correct target:\n" + "\n".join(failures[:20])
