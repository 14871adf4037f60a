"""Targets that misbehave as programs: each run finishes, fails the check that met the misbehaviour
(naming the condition and the input), and runs and reports every other check.

Process-level failures (a segfault, an abort, a hang inside native code) need ``--isolate``: the
checks run in a worker process that is replaced when it dies (``bnverify.isolate``).  The others
are failed checks in a plain run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bnverify.runner import check

REPO = Path(__file__).resolve().parents[1]
HT = "tests.hostile_targets"


def _failed(summary):
    return [r for r in summary.results if r.failed]


def _passed(summary, suite=None):
    return [r for r in summary.results if r.outcome == "passed" and (suite is None or r.suite == suite)]


# --------------------------------------------------------------------------- isolation

@pytest.mark.slow  # a worker process and its replacement: 20-40 s on 2 cores
def test_segfault_in_eval_forward_fails_the_eval_checks_only():
    code, summary = check(f"{HT}:SegfaultsInEval", suites=["forward"], max_examples=2, isolate=True)
    assert code == 1 and summary is not None and summary.verdict == "failed"
    failed = _failed(summary)
    assert failed and all("SIGSEGV" in r.message and "eval forward" in r.message for r in failed)
    assert all("input shape (8, 3, 3, 3) float32" in r.message for r in failed)
    assert any(r.check.startswith("test_forward_eval") for r in failed)
    # the training checks ran in the replacement worker and passed
    assert any(r.check.startswith("test_forward_train") for r in _passed(summary, "forward"))


@pytest.mark.slow  # a worker process and its replacement: 20-40 s on 2 cores
def test_abort_in_backward_fails_the_backward_checks_only():
    code, summary = check(f"{HT}:AbortsInBackward", suites=["forward", "backward"], max_examples=2, isolate=True)
    assert code == 1 and summary is not None
    failed = _failed(summary)
    assert "preflight[backward]" in [r.check for r in failed]
    assert all("SIGABRT" in r.message and "backward calls are abandoned" in r.message for r in failed)
    assert all("input shape (8, 3, 3, 3) float32" in r.message for r in failed)
    assert all(r.outcome == "skipped" and "preflight backward failed" in r.message
               for r in summary.results if r.suite == "backward")
    assert len(_passed(summary, "forward")) >= 8


@pytest.mark.slow  # a worker process and its replacement: 20-40 s on 2 cores
def test_native_hang_on_every_eval_forward_is_waited_for_once():
    code, summary = check(f"{HT}:HangsInNativeEval", suites=["forward"], max_examples=2, isolate=True, timeout=3)
    assert code == 1 and summary is not None
    failed = _failed(summary)
    assert failed and all("eval forward" in r.message for r in failed)
    first = next(r for r in failed if r.suite == "preflight")
    assert "hangs inside native code" in first.message or "hung earlier inside native code" in first.message
    assert "3 s" in first.message and "input shape (8, 3, 3, 3) float32" in first.message
    assert any(r.check.startswith("test_forward_train") for r in _passed(summary, "forward"))
    assert summary.duration_s < 90  # one wait of the limit plus its grace, and one worker restart


@pytest.mark.slow  # a worker process and its replacement: 20-40 s on 2 cores
def test_isolated_run_is_logged(tmp_path, monkeypatch):
    monkeypatch.setenv("BNVERIFY_HOME", str(tmp_path / "home"))
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    code, summary = check(f"{HT}:SegfaultsInEval", suites=["forward"], max_examples=2, isolate=True,
                          tracking=True, tracking_uri=uri)
    assert code == 1 and summary is not None
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("bnverify")
    runs = client.search_runs([exp.experiment_id], max_results=50)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    metrics = parents[0].data.metrics
    passes = {k: v for k, v in metrics.items() if k.endswith(".pass") and "/" in k}
    assert len(passes) == len([r for r in summary.results if r.outcome in ("passed", "failed")])
    assert 0.0 in passes.values() and 1.0 in passes.values()


@pytest.mark.slow  # a worker process and its replacement: 20-40 s on 2 cores
def test_cli_output_has_no_traceback():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "bnverify.cli", "check", f"{HT}:SegfaultsInEval", "--suite", "forward",
                           "--max-examples", "2", "--no-tracking", "--isolate"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert "Traceback" not in out and "Fatal Python error" not in out and 'File "' not in out
    assert "SIGSEGV" in out and "abandoned calls: eval forward" in out


# --------------------------------------------------------------------------- in one process

@pytest.mark.parametrize("attr,needles,others_pass", [
    ("NaNForLargeBatches", ["are NaN or inf where the reference is finite", "for input of shape (4096, "], True),
    ("ReturnsFloat64", ["float64", "float32"], True),
    ("ReturnsOnMeta", ["output is on meta for input on cpu"], False),  # every check sees its output
    ("OutOfMemoryForLargeShapes", ["ran out of memory on input shape", "OutOfMemoryError"], True),
])
def test_hostile_output_is_a_failed_check_naming_condition_and_input(attr, needles, others_pass):
    code, summary = check(f"{HT}:{attr}", suites=["forward"], max_examples=3)
    assert code == 1 and summary is not None and summary.verdict == "failed"
    failed = _failed(summary)
    assert failed and any(all(n in r.message for n in needles) for r in failed), [r.message for r in failed]
    assert not others_pass or _passed(summary), "the checks the misbehaviour does not touch still run and pass"


def test_raises_only_in_backward():
    code, summary = check(f"{HT}:RaisesInBackward", suites=["forward", "backward"], max_examples=2)
    assert code == 1 and summary is not None
    failed = _failed(summary)
    assert "preflight[backward]" in [r.check for r in failed]
    assert all("backward raised RuntimeError" in r.message and "no kernel for this memory layout" in r.message
               and "input shape" in r.message for r in failed)
    assert len(_passed(summary, "forward")) >= 8


def test_python_hang_in_eval_does_not_abandon_training():
    code, summary = check(f"{HT}:HangsInEval", suites=["forward"], max_examples=2, timeout=0.5)
    assert code == 1 and summary is not None
    failed = _failed(summary)
    assert failed and all("eval forward" in r.message for r in failed)
    assert any(r.check.startswith("test_forward_train") for r in _passed(summary, "forward"))
    assert summary.duration_s < 30
