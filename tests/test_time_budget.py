"""The time budget (``bnverify.budget``): a slow correct target gets a verdict within it, and says how many examples ran."""

from __future__ import annotations

import pytest

from bnverify import budget
from bnverify.runner import check

SLOW = "tests.gallery.slow_python:PurePythonBatchNorm"
FAST = "tests.gallery.correct:BatchNorm"


def _run_budget(call_s: float | None, total: float = 300.0, *, explicit: bool = False, checks: int = 10):
    run = budget.RunBudget(total, call_s, explicit)
    run.weights = {f"c{i}": 1.0 for i in range(checks)}
    return run


def test_fast_target_keeps_the_tier_count():
    run = _run_budget(call_s=1e-4)
    assert run.plan("c0", 50, 50, None) == budget.Plan(50)


def test_slow_target_is_cut_to_the_grid_and_names_the_flag():
    run = _run_budget(call_s=0.5)  # 10 checks x 8 calls x 0.5 s: 7.5 examples each fit in 300 s
    plan = run.plan("c0", 50, 50, None)
    assert plan.examples == 7 and plan.flag == "--max-examples 7"


def test_floor_holds_however_slow():
    run = _run_budget(call_s=100.0)
    assert run.plan("c0", 50, 50, None).examples == budget.MIN_EXAMPLES
    assert run.plan("c1", 3, 12, 0.25).examples == 3  # a check the tier itself gives 3 keeps 3


def test_explicit_max_examples_is_never_changed():
    run = _run_budget(call_s=100.0, explicit=True)
    assert run.plan("c0", 50, 50, None) == budget.Plan(50)


@pytest.mark.parametrize("fraction", [None, 0.25, 0.5, 0.3])
@pytest.mark.parametrize("n", [5, 7, 10, 14])
def test_flag_reproduces_the_count(n, fraction):
    p = budget._flag_for(n, fraction)
    assert (p if fraction is None else max(3, int(p * fraction))) == n


def test_budget_must_not_be_negative():
    code, summary = check(FAST, suites=["forward"], extra=["--bn-time-budget", "-1", "-k", "rank2-float64"])
    assert code == 4 and summary is None  # pytest's usage error


def test_slow_correct_target_passes_within_budget_and_reports_examples():
    """The pure-Python batch norm, 8 training-output checks, a 0.25 s budget: a PASS, with the counts.

    The tier's 50 examples of these 8 checks take about 2 s on an idle 2-core machine (examples are
    mostly small; a call on 512 values takes ~3 ms), so 0.25 s is short of it on any machine this runs
    on: every check is cut."""
    code, summary = check(SLOW, suites=["forward"], max_examples=None,
                          extra=["--bn-time-budget", "0.25", "-k", "test_forward_train"])
    assert summary is not None
    assert code == 0 and summary.verdict == "passed", [(r.check, r.message) for r in summary.results if r.failed]
    assert len(summary.results) == 8
    ran = [r.details["examples"] for r in summary.results]
    assert all(budget.MIN_EXAMPLES <= n < 50 for n in ran), ran
    assert all(r.details["reproduce_flags"] == f"--max-examples {r.details['examples']}" for r in summary.results)
    assert summary.params["time_budget_s"] == 0.25 and summary.params["call_time_ms"] > 0
    note = summary.params["time_budget_note"]
    assert "slow target (median call" in note and "instead of the tier's 50" in note, note
    # 8 checks at the floor of 5 examples take ~4 s on an idle core; a loaded machine may stretch it
    assert summary.duration_s < 60, summary.duration_s


def test_fast_target_runs_the_tier_count():
    code, summary = check(FAST, suites=["forward"], extra=["-k", "test_forward_train and rank2-float64"])
    assert code == 0 and summary is not None
    assert [r.details["examples"] for r in summary.results] == [50]
    assert "time_budget_note" not in summary.params
    assert not any("reproduce_flags" in r.details for r in summary.results)


def test_budget_is_shared_by_the_selected_checks_only(monkeypatch):
    """``-k`` deselects after collection: the budget is planned over the checks that run, so one
    selected check of a target with 0.1 s calls keeps its tier count (planned over all 139, it got 5)."""
    monkeypatch.setattr(budget, "measure_call_s", lambda *a, **k: 0.1)
    code, summary = check(FAST, suites=("forward",), seed=0, extra=("-k", "test_forward_train and rank2 and float32"))
    assert code == 0 and summary is not None
    (r,) = summary.results
    assert "reproduce_flags" not in r.details and r.details["examples"] == 50  # the quick tier's count
