"""The same seed gives the same verdicts and numbers, and every failure's reproduce command fails the same way."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from bnverify.plugin import format_table
from bnverify.runner import check

BUGGY = "tests.gallery.buggy_modules:UnbiasedVarianceBatchNorm"
ONE_PASS = "tests.gallery.buggy_modules:OnePassVarianceBatchNorm"
CORRECT = "tests.gallery.correct:BatchNorm"
ROOT = Path(__file__).resolve().parents[1]


def _numbers(summary):
    return [(r.check, r.outcome, r.worst_ratio, r.max_abs_err, r.message, r.details.get("examples"))
            for r in summary.results]


@pytest.mark.parametrize("target, shrink", [
    (BUGGY, False), (CORRECT, False), pytest.param(BUGGY, True, marks=pytest.mark.slow)])
def test_same_seed_same_verdicts_and_numbers(target, shrink):
    # Shrinking stops at a time budget by default, so where it stops depends on the machine's load; a
    # budget these small cases never reach lets it finish, and the same seed then gives the same example.
    runs = [check(target, suites=["forward"], seed=3, shrink=shrink,
                  extra=["-k", "rank2-float32 or test_forward_ill_conditioned and float32",
                         "--bn-shrink-budget", "600"]) for _ in range(2)]
    (c1, s1), (c2, s2) = runs
    assert s1 is not None and s2 is not None
    assert c1 == c2 == (1 if target == BUGGY else 0)
    assert _numbers(s1) == _numbers(s2)


def test_failures_are_reported_on_ordinary_input_when_they_fail_there():
    """A bug that fails everywhere: the reported example is ordinarily conditioned, never blamed on cancellation."""
    code, summary = check(BUGGY, suites=["forward"], shrink=True,
                          extra=["-k", "test_forward_ill_conditioned and float32"])
    assert code == 1 and summary is not None
    for r in summary.results:
        assert r.failed
        assert "input ordinary" in r.message and "fails at ordinary conditioning too" in r.message, r.message
        assert "cancellation" not in r.message and "E[x^2]" not in r.message


def test_ill_conditioning_is_named_only_when_ordinary_input_passes():
    """One-pass variance fails only ill-conditioned input: the report names ill-conditioning as the trigger."""
    code, summary = check(ONE_PASS, suites=["forward"], shrink=True,
                          extra=["-k", "test_forward_ill_conditioned and float32"])
    assert code == 1 and summary is not None
    failed = [r for r in summary.results if r.failed]
    assert failed
    for r in failed:
        assert "ill-conditioning is the trigger: the same check passes on 4 ordinary inputs" in r.message, r.message
        assert "fails at ordinary conditioning too" not in r.message


def test_every_failure_names_its_reproduce_command():
    code, summary = check(BUGGY, suites=["forward"], extra=["-k", "test_forward_train and rank2"])
    assert code == 1 and summary is not None
    table = format_table(summary)
    n_failed = sum(r.failed for r in summary.results)
    assert n_failed == 2
    assert table.count(f"reproduce: bnverify check {BUGGY} --suite forward --seed 0") == n_failed


@pytest.mark.slow
def test_reproduce_command_fails_the_same_check_with_the_same_numbers(tmp_path):
    """The reproduce line a failing run prints, run as a command, fails the same checks with the same numbers.

    Both runs are commands, as a user runs them.  Shrinking is bounded in seconds (``--shrink-budget``),
    and under a different load a shrink that is cut short stops on another example, so both runs report
    the examples as found (``--shrink-budget 0``): what is compared is the seed's draws and numbers."""
    cli = [sys.executable, "-c", "import sys; from bnverify.cli import main; sys.exit(main())"]

    def run(argv: list[str], report: Path) -> tuple[subprocess.CompletedProcess, dict]:
        proc = subprocess.run([*cli, *argv, "--no-tracking", "--shrink-budget", "0", "--report", str(report)],
                              cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
        results = json.loads(report.read_text())["results"]
        return proc, {r["check"]: (r["outcome"], r["worst_ratio"], r["message"]) for r in results}

    proc, first = run(["check", BUGGY, "--suite", "forward", "--seed", "5"], tmp_path / "first.json")
    line = next(ln.strip() for ln in proc.stdout.splitlines() if ln.strip().startswith("reproduce: "))
    argv = shlex.split(line.removeprefix("reproduce: "))
    assert argv[:2] == ["bnverify", "check"] and "--seed" in argv and "5" in argv
    _, again = run(argv[1:], tmp_path / "again.json")
    assert again == first
