"""The command line: exit codes 0/1/2, one-line usage errors, and hostile targets reported as failed checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bnverify import cli
from bnverify.runner import check

REPO = Path(__file__).resolve().parents[1]
QUICK = ["--no-tracking", "--max-examples", "3", "--seed", "1"]


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)


def test_check_torch_passes(capsys):
    assert cli.main(["check", "torch", "--suite", "forward", *QUICK]) == 0
    out = capsys.readouterr().out
    assert "bnverify summary" in out and "PASSED" in out


@pytest.mark.parametrize("target,needle", [
    ("no_such_pkg.bn:BN", "cannot import module 'no_such_pkg.bn'"),
    ("tests.hostile_targets:Missing", "has no attribute 'Missing'"),
    ("tests.hostile_targets:not_a_batchnorm", "cannot tell what kind of target"),
    ("nonexistent_module_xyz", "cannot import module"),
])
def test_usage_errors_exit_2_with_one_line(capsys, target, needle):
    assert cli.main(["check", target, *QUICK]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_bad_option_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["check", "torch", "--tier", "warp"])
    assert exc.value.code == 2


def test_missing_cs231n_functions(capsys):
    assert cli.main(["check", "tests.hostile_targets", "--kind", "numpy-cs231n", *QUICK]) == 2
    assert "lacks batchnorm_forward and batchnorm_backward" in capsys.readouterr().err


def test_target_that_always_raises_fails_its_preflight_once():
    """One failed preflight check with the target's own error; the checks that need it are not run (never passed)."""
    code, summary = check("tests.hostile_targets:RaisesInForward", suites=["forward", "modes"], max_examples=3)
    assert code == 1 and summary.verdict == "failed"
    failed = [r for r in summary.results if r.failed]
    assert [r.suite for r in failed] == ["preflight"]
    assert "raised RuntimeError: CUDA error: invalid configuration argument (simulated)" in failed[0].message
    others = [r for r in summary.results if r.suite != "preflight"]
    assert len(others) >= 30 and all(r.outcome == "skipped" and "not run: preflight" in r.message for r in others)
    assert summary.duration_s < 10


def test_hang_on_every_call_waits_once():
    code, summary = check("tests.hostile_targets:Hangs", suites=["forward"], max_examples=2,
                          extra=["--bn-timeout", "0.5"])
    assert code == 1 and [r.suite for r in summary.results if r.failed] == ["preflight"]
    assert "within 0.5 s" in summary.results[0].message and summary.duration_s < 10


@pytest.mark.parametrize("attr,needle", [
    ("ReturnsNaN", "are NaN or inf where the reference is finite"),
    ("WrongShape", "returned shape"),
])
def test_hostile_target_is_a_failed_check(attr, needle):
    code, summary = check(f"tests.hostile_targets:{attr}", suites=["forward"], max_examples=3)
    assert code == 1 and summary is not None and summary.verdict == "failed"
    failed = [r for r in summary.results if r.failed]
    assert failed and all(needle in r.message for r in failed if r.check.startswith("test_forward_train")), \
        [r.message for r in failed][:2]
    # every check still ran and was reported
    assert len(summary.results) >= 10


def test_input_mutation_is_reported():
    code, summary = check("tests.hostile_targets:MutatesInput", suites=["forward"], max_examples=3)
    assert code == 1
    contract = [r for r in summary.results if r.check.startswith("test_forward_contract")]
    assert contract and all(r.failed and "modified its input in place" in r.message for r in contract)


def test_unsupported_rank_is_skipped_with_the_targets_message():
    code, summary = check("tests.hostile_targets:OnlyRank2", suites=["forward"], max_examples=3)
    assert code == 0, [r.message for r in summary.results if r.failed]
    skipped = [r for r in summary.results if r.outcome == "skipped"]
    assert any("rank 4 not supported by the target" in r.message and "expected 2D input (got 4D input)" in r.message
               for r in skipped)
    assert any(r.outcome == "passed" and "rank2" in r.check for r in summary.results)


def test_junitxml_and_report(tmp_path):
    junit, report = tmp_path / "j.xml", tmp_path / "r.json"
    assert cli.main(["check", "reference", "--suite", "backward", *QUICK, "--junitxml", str(junit),
                     "--report", str(report)]) == 0
    assert "<testsuite" in junit.read_text()
    from bnverify.results import RunSummary

    s = RunSummary.from_json(report.read_text())
    assert s.target == "reference" and s.verdict == "passed" and s.seed == 1


def test_console_script_from_another_directory(tmp_path):
    exe = Path(sys.executable).with_name("bnverify")
    env = {**os.environ, "PYTHONPATH": ""}
    proc = subprocess.run([str(exe), "check", "torch", "--suite", "forward", *QUICK], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    proc = subprocess.run([str(exe), "check", "nope.nope:X"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 2 and "cannot import module" in proc.stderr


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")
def test_failed_checks_of_a_crashing_target_are_still_logged(tmp_path, monkeypatch):
    """Nothing the user ran is lost: a target that raises still produces a logged run with every check."""
    monkeypatch.setenv("BNVERIFY_HOME", str(tmp_path / "home"))
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    code, summary = check("tests.hostile_targets:RaisesInForward", suites=["forward"], max_examples=2,
                          tracking=True, tracking_uri=uri)
    assert code == 1
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("bnverify")
    parents = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].data.tags["verdict"] == "failed"
    passes = {k: v for k, v in parents[0].data.metrics.items() if k.endswith(".pass") and "/" in k}
    assert len(passes) == len([r for r in summary.results if r.outcome in ("passed", "failed")])
    assert passes and all(v == 0.0 for v in passes.values())


def test_a_check_leaves_nothing_but_the_store_in_the_users_directory(tmp_path):
    exe = Path(sys.executable).with_name("bnverify")
    env = {k: v for k, v in os.environ.items() if k != "HYPOTHESIS_STORAGE_DIRECTORY"}
    env["PYTHONPATH"] = ""
    proc = subprocess.run([str(exe), "check", "torch", "--suite", "forward", "--max-examples", "2", "--no-tracking"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert proc.stdout.startswith("bnverify: checking torch (batch norm, kind torch-module, convention torch), seed ")


def test_nan_from_a_full_precision_target_is_named_not_blamed_on_cancellation():
    code, summary = check("tests.hostile_targets:ReturnsNaN", suites=["forward"], max_examples=2,
                          extra=["-k", "test_forward_train"])
    msgs = [r.message for r in summary.results if r.failed]
    assert code == 1 and msgs
    assert all("returned NaN/inf for" in m and "cancellation" not in m for m in msgs), msgs[0]
