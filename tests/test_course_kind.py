"""The numpy-cs231n kind on the course's contract (SPEC section 2): course-shaped solutions as handed in."""

from __future__ import annotations

from pathlib import Path

import pytest

from bnverify.loading import load_target
from bnverify.runner import check
from bnverify.target import TargetLoadError

REPO = Path(__file__).resolve().parents[1]
C = "tests.gallery.course."


def _results(target, suites, **kw):
    code, summary = check(target, suites=suites, seed=0, max_examples=3, **kw)
    assert summary is not None
    return code, {r.check: r for r in summary.results}


def test_staged_solution_passes_with_test_mode_cache_none(monkeypatch):
    monkeypatch.chdir(REPO)
    code, res = _results(C + "staged", ["forward", "backward"])
    assert code == 0, [r.message for r in res.values() if r.failed]
    ev = res["test_backward_eval[float64]"]
    assert ev.outcome == "skipped" and "training forward" in ev.message and "contract" in ev.message
    half = res["test_forward_half[float16]"]
    assert half.outcome == "skipped" and "65504" in half.message
    note = res["test_forward_contract[float32]"].details.get("note", "")
    assert "float64 gradients for float32 input" in note


def test_template_stub_is_not_implemented_and_named(monkeypatch):
    monkeypatch.chdir(REPO)
    code, res = _results(C + "stub_spatial", ["forward"])
    assert code == 0
    r4 = res["test_forward_train[rank4-float32]"]
    assert r4.outcome == "skipped"
    assert "spatial_batchnorm_forward" in r4.message and "not implemented" in r4.message


def test_spatial_function_that_raises_fails(monkeypatch):
    monkeypatch.chdir(REPO)
    code, res = _results(C + "bug_spatial_raises", ["forward"])
    assert code == 1
    r4 = res["test_forward_train[rank4-float32]"]
    assert r4.failed and "spatial_batchnorm_forward raised ValueError" in r4.message


def test_forward_only_module_is_accepted(monkeypatch):
    monkeypatch.chdir(REPO)
    target = load_target(C + "forward_only")
    assert target.kind == "numpy-cs231n" and not target.has_backward
    code, res = _results(C + "forward_only", ["forward", "backward"])
    assert code == 0
    assert res["test_forward_train[rank2-float64]"].outcome == "passed"
    bw = res["test_backward_train[rank2-float64]"]
    assert bw.outcome == "skipped" and "no batchnorm_backward" in bw.message


def test_module_without_forward_is_refused():
    with pytest.raises(TargetLoadError, match="lacks batchnorm_forward"):
        load_target("tests.hostile_targets", kind="numpy-cs231n")
