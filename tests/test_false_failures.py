"""Zero false failures: every correct batch norm passes the whole quick tier on 20 hypothesis seeds.

The correct targets: the built-in ones (``torch``, ``reference``, ``torch.nn.functional:batch_norm``),
``tests.gallery``'s correct and public-code ones (``CORRECT``, ``CORRECT_PUBLIC``) and a correct module
of each other framework convention under its name (``CORRECT_CONVENTIONS``).  Each runs the quick tier
(forward, backward, modes, invariance, as ``bnverify check TARGET`` runs it) at 8 examples per check.

The seeds are split by cost:

- seed 0 in the default test command (one test per target);
- seeds 1-4 marked ``slow`` (``pytest -m slow``; ``.ci/run`` runs them), one test per target and seed;
- seeds 5-19 marked ``soak``, with the 50-seed soak of ``tests/test_soak.py`` (``pytest -m soak``).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pytest

from bnverify.runner import check
from tests.gallery.registry import CORRECT, CORRECT_PUBLIC
from tests.gallery.registry_invariance import INVARIANCE_CHECKS
from tests.gallery.registry_modes import CORRECT_CONVENTIONS

REPO = Path(__file__).resolve().parents[1]
FAST_SEEDS = range(0, 1)
SLOW_SEEDS = range(1, 5)
SOAK_SEEDS = range(5, 20)
MAX_EXAMPLES = 8


class Correct(NamedTuple):
    target: str
    kind: str | None
    convention: str | None  # None: the kind's default


def _correct() -> list[Correct]:
    out = [Correct("torch", None, None), Correct("reference", None, None),
           Correct("torch.nn.functional:batch_norm", None, None)]
    out += [Correct(t, k, None) for t, k in (*CORRECT, *CORRECT_PUBLIC)]
    for t, k, c in CORRECT_CONVENTIONS:
        # torch and reference under "torch" are the default-convention runs above
        if not any(o.target == t and o.kind == k for o in out):
            out.append(Correct(t, k, c))
    return out


TARGETS = _correct()
EVERY_INVARIANCE_CHECK = {("torch", None), ("reference", None), ("torch.nn.functional:batch_norm", None),
                          ("tests.gallery.correct:Cs231nBatchNorm", "numpy-cs231n"),
                          ("tests.gallery.correct:BatchNorm", None)}
"""Targets that run (pass, not skip) every invariance check: the exact checks need no feature they lack."""


def _id(t: Correct) -> str:
    return t.target + (f"-{t.kind}" if t.kind else "") + (f"-{t.convention}" if t.convention else "")


def test_every_correct_target_is_swept():
    names = {t.target for t in TARGETS}
    assert {t for t, _ in (*CORRECT, *CORRECT_PUBLIC)} <= names
    assert {t for t, _, _ in CORRECT_CONVENTIONS} <= names
    assert len(set(FAST_SEEDS) | set(SLOW_SEEDS) | set(SOAK_SEEDS)) == 20


@pytest.mark.parametrize("seed", FAST_SEEDS)
@pytest.mark.parametrize("spec", TARGETS, ids=_id)
def test_correct_target_passes(spec, seed, monkeypatch):
    _passes(spec, [seed], monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("seed", SLOW_SEEDS)
@pytest.mark.parametrize("spec", TARGETS, ids=_id)
def test_correct_target_passes_more_seeds(spec, seed, monkeypatch):
    _passes(spec, [seed], monkeypatch)


@pytest.mark.soak
@pytest.mark.parametrize("spec", TARGETS, ids=_id)
def test_correct_target_passes_seeds_5_to_19(spec, monkeypatch):
    _passes(spec, SOAK_SEEDS, monkeypatch)


def _passes(spec: Correct, seeds, monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    failures: list[str] = []
    for seed in seeds:
        code, summary = check(spec.target, kind=spec.kind, convention=spec.convention, seed=seed,
                              max_examples=MAX_EXAMPLES)
        assert summary is not None, f"seed {seed}: no summary, exit {code}"
        failures += [f"seed {seed} {r.suite}/{r.check}: {r.message.splitlines()[0] if r.message else ''}"
                     for r in summary.results if r.failed]
        ran = {r.suite for r in summary.results if r.outcome == "passed"}
        assert ran == {"forward", "backward", "modes", "invariance"} or (
            spec.target.endswith("forward_only") and ran == {"forward", "modes", "invariance"}), (
            f"seed {seed}: checks passed only in the suites {sorted(ran)}")
        if (spec.target, spec.kind) in EVERY_INVARIANCE_CHECK:
            passed = {r.check.split("[")[0] for r in summary.results if r.suite == "invariance" and r.passed}
            missing = sorted(set(INVARIANCE_CHECKS) - passed)
            assert not missing, f"seed {seed}: invariance checks that did not pass: {missing}"
        assert code == (1 if failures else 0), f"seed {seed}: exit {code}"
    assert not failures, "\n".join(failures[:20])
