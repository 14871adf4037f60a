"""Under pytest-xdist only the controller writes: workers' results travel back and land in one run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")
def test_xdist_workers_results_reach_one_mlflow_run(tmp_path):
    db = tmp_path / "store.db"
    uri = f"sqlite:///{db}"
    report = tmp_path / "summary.json"
    env = {**os.environ, "BNVERIFY_HOME": str(tmp_path / "home"), "MLFLOW_TRACKING_URI": ""}
    env.pop("MLFLOW_TRACKING_URI")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--pyargs", "bnverify.suites", "--bn-target", "torch", "-n", "2",
         "--bn-suite", "forward", "--bn-suite", "backward", "--bn-max-examples", "3", "--bn-seed", "5",
         "--bn-tracking-uri", uri, "--bn-report", str(report), "-p", "no:cacheprovider", "-q",
         "-o", "addopts=", "-o", "filterwarnings="],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    from bnverify.results import RunSummary

    summary = RunSummary.from_json(report.read_text())
    checks = [r for r in summary.results if r.outcome == "passed"]
    assert len(checks) >= 30, len(checks)
    # the err/tol measured on the workers came back with the reports
    assert all(r.worst_ratio is not None for r in checks if r.check.startswith("test_forward_train"))

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("bnverify")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1, "exactly one writer: one parent run per invocation"
    assert sorted(r.data.tags.get("suite") for r in children) == ["backward", "forward"]
    metrics = parents[0].data.metrics
    passes = [k for k in metrics if k.endswith(".pass") and "/" in k]
    assert len(passes) == len(summary.results)
    assert all(metrics[k] == 1.0 for k in passes)
