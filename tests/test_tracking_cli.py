"""`bnverify sync | ui | compare | history` on real MLflow stores (SQLite in tmp_path)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pytest

from bnverify import tracking, tracking_cli
from tests.test_tracking import (
    COMMIT,
    copy_store,
    free_port,
    isolate,
    make_migrated_db,
    make_summary,
)

OTHER = "feedbeef" * 5


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return isolate(tmp_path, monkeypatch)


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_migrated_db(tmp_path_factory.mktemp("cli-template"))


@pytest.fixture
def store(tmp_path: Path, migrated_db: Path) -> str:
    return copy_store(tmp_path, migrated_db)


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = tracking_cli.main(list(argv))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def logged(store: str, **kw: object) -> str:
    target = str(kw.pop("target", "pkg.mod:MyBN"))
    out = tracking.log_invocation(make_summary(target, **kw), tracking_uri=store)  # type: ignore[arg-type]
    assert out.run_id, out.message
    time.sleep(0.002)  # distinct start times, so "latest" is well defined
    return out.run_id


def test_commands_register_on_the_main_parser() -> None:
    parser = argparse.ArgumentParser(prog="bnverify")
    tracking_cli.add_commands(parser.add_subparsers(dest="command"))
    for argv in (["sync"], ["ui", "--print-only"], ["compare", "a", "b"], ["history", "t"]):
        args = parser.parse_args([*argv, "--tracking-uri", "sqlite:////x.db", "--experiment", "e"])
        assert callable(args.func) and args.tracking_uri == "sqlite:////x.db" and args.experiment == "e"
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["ui", "--port", "0"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["compare", "only-one"])


def test_history_lists_verdicts_and_key_metrics_newest_first(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    old = logged(store, fail=True)
    new = logged(store, fail=False, commit=OTHER)
    logged(store, target="pkg.mod:Other")
    rc, out, err = cli(capsys, "history", "pkg.mod:MyBN", "--tracking-uri", store)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("pkg.mod:MyBN: 2 run(s)")
    assert new in lines[3] and "passed" in lines[3] and OTHER[:10] in lines[3]
    assert old in lines[4] and "failed" in lines[4] and COMMIT[:10] in lines[4]
    rc, out, _ = cli(
        capsys, "history", "pkg.mod:MyBN", "--tracking-uri", store, "--format", "json",
        "--metric", "convergence/test_convergence_1.float32-_8_ 3_.test_acc", "--limit", "1",
    )
    rows = json.loads(out)
    assert rc == 0 and len(rows) == 1 and rows[0]["run_id"] == new
    assert rows[0]["failed"] == 0 and rows[0]["passed"] == 39 and rows[0]["worst_ratio"] == pytest.approx(0.9)
    assert rows[0]["convergence/test_convergence_1.float32-_8_ 3_.test_acc"] == pytest.approx(0.5 + 0.03 * 14)


def test_history_of_unknown_target_or_missing_store_is_a_usage_error(
    store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logged(store)
    rc, out, err = cli(capsys, "history", "nope", "--tracking-uri", store)
    assert rc == 2 and not out and err.count("\n") == 1 and "no runs of target 'nope'" in err
    missing = tmp_path / "none" / "mlflow.db"
    rc, _, err = cli(capsys, "history", "x", "--tracking-uri", f"sqlite:///{missing.as_posix()}")
    assert rc == 2 and "no tracking store" in err and not missing.exists()
    rc, _, err = cli(capsys, "history", "x", "--tracking-uri", f"http://127.0.0.1:{free_port()}")
    assert rc == 2 and err.startswith("bnverify: cannot read the tracking store") and err.count("\n") == 1


def test_compare_shows_only_the_checks_that_differ(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    failing = logged(store, fail=True)
    fixed = logged(store, fail=False, commit=OTHER)
    rc, out, err = cli(capsys, "compare", "pkg.mod:MyBN@latest", "pkg.mod:MyBN@latest~1", "--tracking-uri", store)
    assert rc == 1, err
    assert f"A: {fixed}" in out and f"B: {failing}" in out
    assert "1 of 40 checks differ (timings not compared)" in out
    rows = [line.split() for line in out.splitlines()]
    assert ["modes/test_modes_0.float32-_8_", "3_", "pass", "1", "0"] in rows
    assert "forward/" not in out and "duration_s" not in out  # equal checks and timings stay out
    assert "git.commit" in out and "verdict" in out  # identity differences shown for context
    # the same pair by commit prefix, as JSON
    rc, out, _ = cli(capsys, "compare", f"pkg.mod:MyBN@{OTHER[:7]}", f"pkg.mod:MyBN@{COMMIT[:7]}",
                     "--tracking-uri", store, "--format", "json")
    doc = json.loads(out)
    assert rc == 1 and doc["a"]["run_id"] == fixed and doc["b"]["run_id"] == failing
    assert doc["checks"] == 40 and doc["differing_checks"] == 1
    assert {(r["check"], r["metric"]) for r in doc["rows"]} >= {
        ("modes/test_modes_0.float32-_8_ 3_", "pass"),
        ("(invocation)", "summary.failed"),
    }


def test_compare_tolerances_timings_and_identical_runs(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    a = logged(store, fail=False)
    b = logged(store, fail=False, ratio_shift=1e-3)
    rc, out, _ = cli(capsys, "compare", a, b, "--tracking-uri", store)
    assert rc == 1 and "worst_ratio" in out and "pass " not in out
    rc, out, _ = cli(capsys, "compare", a, b, "--tracking-uri", store, "--rtol", "0.5")
    assert rc == 1 and "6 of 40 checks differ" in out  # the six 0 vs 0.001: only an atol hides them
    rc, out, _ = cli(capsys, "compare", a, b, "--tracking-uri", store, "--rtol", "0.5", "--atol", "0.01")
    assert rc == 0 and "no differences in 40 checks" in out
    c = logged(store, fail=False)
    rc, out, _ = cli(capsys, "compare", a, c, "--tracking-uri", store, "--timings")
    assert rc == 0 and "no differences in 40 checks" in out and "timings not compared" not in out


def test_compare_two_targets_and_child_run_ids(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    mine = logged(store, target="pkg.mod:MyBN", fail=False)
    logged(store, target="pkg.mod:Other", fail=True)
    rc, out, _ = cli(capsys, "compare", "pkg.mod:MyBN", "pkg.mod:Other@latest", "--tracking-uri", store)
    assert rc == 1 and "target" in out and "pkg.mod:Other" in out
    from mlflow import MlflowClient

    exp = MlflowClient(store).get_experiment_by_name("bnverify")
    child = MlflowClient(store).search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{mine}'")[0]
    rc, out, _ = cli(capsys, "compare", child.info.run_id, mine, "--tracking-uri", store)
    assert rc == 0 and f"A: {mine}" in out  # a suite run stands for its invocation


def test_compare_unknown_references_are_usage_errors(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    run = logged(store)
    for ref, words in (
        ("0123456789abcdef0123456789abcdef", "unknown run id 0123456789abcdef0123456789abcdef"),
        ("pkg.mod:Nope@latest", "no runs of target 'pkg.mod:Nope'"),
        ("pkg.mod:MyBN@latest~3", "no 4 runs of target 'pkg.mod:MyBN'"),
        ("pkg.mod:MyBN@abcdef1", "no run of target 'pkg.mod:MyBN' at commit 'abcdef1'"),
    ):
        rc, out, err = cli(capsys, "compare", run, ref, "--tracking-uri", store)
        assert rc == 2 and not out and err.count("\n") == 1 and words in err, (ref, err)


def test_ui_print_only_uses_the_configured_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "ui" / "mlflow.db"
    uri = f"sqlite:///{db.as_posix()}"
    rc, out, _ = cli(capsys, "ui", "--print-only", "--tracking-uri", uri, "--port", "5055")
    assert rc == 0 and "http://127.0.0.1:5055" in out
    assert f"-m mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5055" in out
    assert f"--artifacts-destination {db.parent / 'artifacts'} --workers 1" in out
    assert not db.exists()  # print-only starts and creates nothing
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/m.db")
    rc, out, _ = cli(capsys, "ui", "--print-only")
    assert rc == 0 and "--backend-store-uri sqlite:////elsewhere/m.db" in out
    rc, out, _ = cli(capsys, "ui", "--print-only", "--tracking-uri", "http://mlflow.internal:5000")
    assert rc == 0 and "is a tracking server; its UI is at http://mlflow.internal:5000" in out


def test_sync_command_replays_once(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    out = tracking.log_invocation(make_summary(), tracking_uri=dead)
    assert out.spooled
    rc, text, _ = cli(capsys, "sync", "--list")
    assert rc == 0 and out.spooled.name in text and "pkg.mod:MyBN" in text and "failed" in text
    rc, text, err = cli(capsys, "sync", "--tracking-uri", dead)
    assert rc == 1 and "failed 1, still spooled" in text and err.startswith("bnverify: sync incomplete")
    assert out.spooled.exists()
    rc, text, err = cli(capsys, "sync", "--tracking-uri", store)
    assert rc == 0 and "replayed 1 spooled invocation(s)" in text, err
    rc, text, _ = cli(capsys, "sync", "--tracking-uri", store)
    assert rc == 0 and text.startswith("nothing to sync")
    rc, text, _ = cli(capsys, "history", "pkg.mod:MyBN", "--tracking-uri", store)
    assert rc == 0 and text.startswith("pkg.mod:MyBN: 1 run(s)")


def test_compare_reports_a_bench_timing_only_beyond_both_runs_noise():
    from types import SimpleNamespace

    from bnverify.tracking_cli import diff_runs

    def run(median, ci):
        metrics = {"bench/test_bench_case.median_ms": median, "bench/test_bench_case.ci95_half_ms": ci}
        return SimpleNamespace(data=SimpleNamespace(metrics=metrics))

    quiet = diff_runs(run(10.0, 0.3), run(10.4, 0.4), timings=True)
    assert [r.metric for r in quiet if r.metric == "median_ms"] == []  # 0.4 ms < sqrt(0.3^2 + 0.4^2) = 0.5 ms
    slower = [r for r in diff_runs(run(10.0, 0.3), run(20.0, 0.4), timings=True) if r.metric == "median_ms"]
    assert len(slower) == 1 and abs(slower[0].noise - 0.5) < 1e-12


def _seeded(seed: int, ratios: list[float], failed: set[int]) -> str:
    from bnverify.results import CheckResult, RunSummary

    results = [CheckResult(nodeid=f"suites/test_bn_forward.py::test_c{i}", suite="forward", check=f"test_c{i}",
                           outcome="failed" if i in failed else "passed", worst_ratio=r)
               for i, r in enumerate(ratios)]
    summary = RunSummary(target="pkg.mod:Seeded", kind="torch-module", convention="torch", tier="quick",
                         device="cpu", seed=seed, params={"seed": seed}, results=results)
    return summary  # type: ignore[return-value]


def test_compare_puts_flips_then_crossings_then_real_changes_first(store: str,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Between a passing and a failing run: the flips lead, then tolerance crossings, then changes beyond
    seed noise; the checks that moved within seed noise are only counted."""
    n = 30
    a_ratios = [0.1 + 0.01 * i for i in range(n)]
    b_ratios = [r * 1.7 for r in a_ratios]  # within seed noise (a factor < 10)
    b_ratios[0] = b_ratios[1] = b_ratios[2] = 5.0  # the flips
    b_ratios[3] = 0.95  # 0.13 -> 0.95: now close to the tolerance
    a_ratios[4], b_ratios[4] = 0.001, 0.3  # a factor of 300: beyond seed noise
    for seed, ratios, failed in ((1, a_ratios, set()), (2, b_ratios, {0, 1, 2})):
        out = tracking.log_invocation(_seeded(seed, ratios, failed), tracking_uri=store)
        assert out.run_id, out.message
        time.sleep(0.002)
    rc, out, _ = cli(capsys, "compare", "pkg.mod:Seeded@latest~1", "pkg.mod:Seeded@latest", "--tracking-uri", store)
    assert rc == 1
    first = out.index("verdict flips, passed -> failed: 3")
    crossing = out.index("tolerance crossings")
    beyond = out.index("other changes beyond seed noise")
    rest = out.index(f"{n - 5} other checks moved within seed noise")
    assert first < crossing < beyond < rest
    assert "30 checks: 3 newly failing, 0 newly passing, 1 near the tolerance, 1 changed beyond seed noise, 25 within" \
        in out
    flips, crossings = out[first:crossing], out[crossing:beyond]
    assert all(f"forward/test_c{i}" in flips for i in range(3)) and "test_c3" not in flips
    assert "forward/test_c3" in crossings and "0.95" in crossings
    assert "forward/test_c4" in out[beyond:rest] and "forward/test_c9" not in out[:rest]
    rc, out, _ = cli(capsys, "compare", "pkg.mod:Seeded@latest~1", "pkg.mod:Seeded@latest", "--tracking-uri", store,
                     "--format", "json")
    doc = json.loads(out)
    assert [r["check"] for r in doc["flips"]] == [f"forward/test_c{i}" for i in range(3)]
    assert len(doc["within_seed_noise"]) == n - 5


def test_compare_with_the_same_seed_lists_every_change() -> None:
    from bnverify.tracking_cli import DiffRow, classify

    rows = [DiffRow("forward/test_a", "worst_ratio", 0.1, 0.15), DiffRow("forward/test_b", "pass", 1.0, 0.0),
            DiffRow("forward/test_b", "worst_ratio", 0.2, 3.0)]
    same = classify(rows, "7", 7)
    assert same.same_seed and [r.check for r in same.flips] == ["forward/test_b"]
    assert "forward/test_a" in {r.check for r in same.changes} and not same.within_noise
    other = classify(rows, 7, 8)
    assert other.within_noise == {"forward/test_a"}
