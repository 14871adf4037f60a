"""What bnverify writes to MLflow and prints carries no secrets, artifact names made from user
input stay inside the run, `bnverify ui` binds loopback unless told otherwise and refuses a
busy port at once, and infinite values read back as inf.

Store-free where possible (the run plan, the spool); a real SQLite store where what MLflow
does matters (inf, experiment tags).  Stopping `bnverify ui` with SIGTERM is checked on a
running server in tests/test_tracking.py (it reuses that test's server start-up).
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bnverify import tracking, tracking_cli
from bnverify.results import CheckResult, RunSummary
from bnverify.tracking import invocation
from bnverify.tracking.config import (
    describe_error,
    env_secrets,
    is_secret_name,
    redact,
    redact_argv,
    safe_artifact_path,
)
from bnverify.tracking.plan import STORED_INF, TAG_COMMAND, TAG_INFINITE, from_store, plan_invocation
from bnverify.tracking.query import invocation_metrics
from bnverify.tracking.spool import stage
from tests.test_tracking import client_for, copy_store, free_port, isolate, make_migrated_db, make_summary

PASSWORD = "hunter2-Pa55w0rd"
TOKEN = "ghp_0123456789abcdefSECRET"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return isolate(tmp_path, monkeypatch)


@pytest.fixture
def secrets_in_env(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", TOKEN)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")  # a name, not a secret
    return [PASSWORD, TOKEN, AWS_SECRET]


@pytest.fixture(scope="module")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_migrated_db(tmp_path_factory.mktemp("security-template"))


@pytest.fixture
def store(tmp_path: Path, migrated_db: Path) -> str:
    return copy_store(tmp_path, migrated_db)


def leaky_summary() -> RunSummary:
    """A summary whose tags, params, target, messages and reproduce line carry secrets."""
    s = make_summary()
    s.tags.update({
        "tracking_uri": f"postgresql://bnverify:{PASSWORD}@db.internal:5432/bnverify",
        "artifact_store": f"https://{TOKEN}@example.com/store?X-Amz-Signature=abc123def456&part=1",
        "api_token": "abc",  # secret-named: hidden whatever its value
        "note": f"logged with {AWS_SECRET} around",
    })
    s.params.update({"password": "short", "server": f"http://u:{PASSWORD}@h:5000", "plain": 3})
    s.reproduce = f"bnverify check pkg.mod:MyBN --tracking-uri http://u:{PASSWORD}@h"
    s.results[0].message = f"could not reach http://u:{PASSWORD}@h (token {TOKEN})"
    return s


def assert_clean(text: str, secrets: list[str]) -> None:
    for secret in secrets:
        assert secret not in text, f"secret {secret[:6]}... leaked in: {text[:300]}"


# --------------------------------------------------------------------------- names and values


def test_secret_names_and_values_come_from_the_environment(secrets_in_env: list[str]) -> None:
    for name in ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "GITHUB_TOKEN", "DATABRICKS_TOKEN", "AZURE_STORAGE_CONNECTION_STRING", "api-key", "apiKey",
                 "sslpassword", "--db-password", "X-Amz-Signature", "client_secret"):
        assert is_secret_name(name), name
    for name in ("PWD", "OLDPWD", "HOME", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_URI", "KEYBOARD",
                 "target", "passed", "worst_ratio", "mlflow.source.name", "MLFLOW_TRACKING_INSECURE_TLS"):
        assert not is_secret_name(name), name
    found = env_secrets()
    assert set(secrets_in_env) <= set(found) and "alice" not in found


def test_uri_credentials_are_redacted() -> None:
    assert redact("postgresql://bnverify:pw@db:5432/x") == "postgresql://bnverify:***@db:5432/x"
    assert redact("postgresql+psycopg2://u:p%40ss@db/x") == "postgresql+psycopg2://u:***@db/x"
    assert redact(f"https://{TOKEN}@github.com/x.git") == "https://***@github.com/x.git"
    assert redact("http://h:5000/?token=abc&x=1") == "http://h:5000/?token=***&x=1"
    assert redact("s3://b/k?X-Amz-Signature=abc&X-Amz-Date=1") == "s3://b/k?X-Amz-Signature=***&X-Amz-Date=1"
    assert redact("see http://a:b@h and sqlite:////tmp/m.db") == "see http://a:***@h and sqlite:////tmp/m.db"
    for plain in ("sqlite:////tmp/x.db", "http://127.0.0.1:5000", "file:///a/b", "user@example.com"):
        assert redact(plain) == plain


def test_command_lines_lose_secret_option_values(secrets_in_env: list[str]) -> None:
    argv = ["bnverify", "check", "pkg:BN", "--password", "p4ss-word", "--api-key=k3y-value", "-o", "token=t0ken-x",
            "--tracking-uri", f"http://u:{PASSWORD}@h:5000", "--note", f"x{TOKEN}y", "--seed", "3"]
    shown = redact_argv(argv)
    assert shown == ["bnverify", "check", "pkg:BN", "--password", "***", "--api-key=***", "-o", "token=***",
                     "--tracking-uri", "http://u:***@h:5000", "--note", "x***y", "--seed", "3"]
    line = invocation.command_line(["/usr/bin/bnverify", *argv[1:]])
    assert line.startswith("bnverify check pkg:BN --password '***'")
    assert_clean(line, [*secrets_in_env, "p4ss-word", "k3y-value", "t0ken-x"])


# --------------------------------------------------------------------------- what is logged


def test_no_secret_reaches_a_tag_param_or_description(secrets_in_env: list[str], monkeypatch: pytest.MonkeyPatch
                                                      ) -> None:
    monkeypatch.setattr(sys, "argv", ["bnverify", "check", "pkg.mod:MyBN", "--tracking-uri",
                                      f"http://u:{PASSWORD}@h", "--password", "p4ss-word"])
    summary = invocation.scrubbed(leaky_summary())
    summary.tags[TAG_COMMAND] = invocation.command_line()
    plan = plan_invocation(summary, "inv")
    for run in (plan.parent, *plan.children.values()):
        everything = json.dumps([run.name, run.tags, run.params])
        assert_clean(everything, [*secrets_in_env, "p4ss-word", "abc123def456"])
    t, p = plan.parent.tags, plan.parent.params
    assert t["tracking_uri"] == "postgresql://bnverify:***@db.internal:5432/bnverify"
    assert t["api_token"] == "***" and p["password"] == "***" and p["plain"] == "3"
    assert t["note"] == "logged with *** around"
    assert t[TAG_COMMAND] == "bnverify check pkg.mod:MyBN --tracking-uri 'http://u:***@h' --password '***'"
    assert summary.results[0].message == "could not reach http://u:***@h (token ***)"
    assert "--tracking-uri http://u:***@h" in t["mlflow.note.content"]  # the reproduce line
    assert_clean(summary.to_json(), [*secrets_in_env, "abc123def456"])  # summary.json, logged and spooled


def test_the_spool_holds_no_secret(secrets_in_env: list[str], monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    monkeypatch.setattr(invocation, "mlflow_available", lambda: False)  # spooled at once
    out = tracking.log_invocation(leaky_summary(), tracking_uri=f"http://u:{PASSWORD}@h:5000",
                                  artifacts={"report.txt": "r"})
    assert out.spooled is not None and out.run_id is None
    assert_clean(out.message, secrets_in_env)
    assert "http://u:***@h:5000" in out.message
    for f in out.spooled.rglob("*"):
        if f.is_file():
            assert_clean(f.read_text(encoding="utf-8", errors="replace"), secrets_in_env)
    # a store's own error message may quote the URI or a token: messages and meta.json get it redacted
    error = describe_error(ConnectionError(f"cannot reach http://u:{PASSWORD}@h:5000 with {TOKEN}"))
    assert error == "ConnectionError: cannot reach http://u:***@h:5000 with ***"


def test_artifact_names_from_user_input_stay_inside_the_run(tmp_path: Path) -> None:
    assert safe_artifact_path("../../etc/passwd") == "etc/passwd"
    assert safe_artifact_path("/abs/p.txt") == "abs/p.txt"
    assert safe_artifact_path("a\\..\\..\\b.txt") == "a/b.txt"
    assert safe_artifact_path("plots/pkg.mod:MyBN/test_x[float32-(8, 3)].png") == "plots/pkg.mod_MyBN/test_x_float32-_8_3_.png"
    assert safe_artifact_path("evil\x00\n\x1b[31m.txt") == "evil_31m.txt"
    assert safe_artifact_path("..") is None and safe_artifact_path("") is None
    long_a, long_b = safe_artifact_path("x" * 300 + "a"), safe_artifact_path("x" * 300 + "b")
    assert long_a and long_b and long_a != long_b and len(long_a) <= 100
    deep = safe_artifact_path("/".join(["d" * 90] * 10) + "/f.png")
    assert deep and len(deep) <= 200 and deep.endswith("/f.png")

    folder = tmp_path / "staged"
    names = {"../../outside.txt": "x", "pkg.mod:My BN/..\\..\\r.txt": "y", "\x07bell\tname.json": "z",
             "y" * 400 + ".txt": "w"}
    notes = stage(folder, make_summary(), names, {})
    assert not notes
    written = sorted(str(f.relative_to(folder / "artifacts")) for f in (folder / "artifacts").rglob("*") if f.is_file())
    assert "outside.txt" in written and "pkg.mod_My_BN/r.txt" in written and "bell_name.json" in written
    assert all(len(w) <= 200 and all(len(part) <= 100 for part in Path(w).parts) for w in written)
    assert not (tmp_path / "outside.txt").exists()


# --------------------------------------------------------------------------- bnverify ui


def test_ui_binds_loopback_unless_told_and_warns_for_other_hosts(capsys: pytest.CaptureFixture[str],
                                                                 tmp_path: Path) -> None:
    uri = f"sqlite:///{(tmp_path / 'm.db').as_posix()}"
    assert tracking_cli.main(["ui", "--print-only", "--tracking-uri", uri, "--port", "5055"]) == 0
    out = capsys.readouterr().out
    assert "--host 127.0.0.1 --port 5055" in out and "http://127.0.0.1:5055" in out
    assert tracking_cli.is_loopback("127.0.0.1") and tracking_cli.is_loopback("::1")
    assert tracking_cli.is_loopback("localhost") and not tracking_cli.is_loopback("0.0.0.0")
    # a non-loopback address: a warning, then (the port is taken here) the busy-port error, fast
    with socket.socket() as held:
        held.bind(("0.0.0.0", 0))
        held.listen()
        port = held.getsockname()[1]
        rc = tracking_cli.main(["ui", "--tracking-uri", uri, "--host", "0.0.0.0", "--port", str(port)])
    err = capsys.readouterr().err
    assert rc == 2 and "warning: the UI listens on 0.0.0.0" in err and "no authentication" in err
    assert not (tmp_path / "m.db").exists()


def test_ui_on_a_busy_port_fails_at_once_naming_the_port(tmp_path: Path) -> None:
    uri = f"sqlite:///{(tmp_path / 'm.db').as_posix()}"
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "bnverify.tracking_cli", "ui", "--tracking-uri", uri,
                               "--port", str(port)], capture_output=True, text=True, timeout=60)
        elapsed = time.perf_counter() - t0
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert elapsed < 5, elapsed
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"bnverify: cannot serve the UI on 127.0.0.1:{port}: Address already in use; "
                     "choose another port with --port N"]
    assert "http://" not in proc.stdout  # no URL for a server that never ran
    assert tracking_cli.port_in_use("127.0.0.1", free_port()) is None


# --------------------------------------------------------------------------- inf, and the experiment's kind


def test_infinite_ratios_read_back_as_inf_in_compare_and_history(store: str, capsys: pytest.CaptureFixture[str]
                                                                 ) -> None:
    results = [
        CheckResult(nodeid="s::test_nan_out", suite="forward", check="test_nan_out", outcome="failed",
                    worst_ratio=math.inf, max_abs_err=math.inf, message="returned NaN/inf"),
        CheckResult(nodeid="s::test_ok", suite="forward", check="test_ok", outcome="passed", worst_ratio=0.25),
    ]
    summary = RunSummary(target="pkg:Inf", kind="torch-module", convention="torch", tier="quick", device="cpu",
                         seed=1, results=results, duration_s=1.0)
    out = tracking.log_invocation(summary, tracking_uri=store)
    assert out.run_id, out.message
    client = client_for(store)
    parent = client.get_run(out.run_id)
    # what MLflow's SQL store keeps for inf (SqlAlchemyStore._log_metrics), and the tag that says so
    assert parent.data.metrics["forward/test_nan_out.worst_ratio"] == STORED_INF
    assert parent.data.tags[TAG_INFINITE] == "forward/test_nan_out.worst_ratio,summary.worst_ratio"
    assert "err/tol **inf**" in parent.data.tags["mlflow.note.content"]
    merged = invocation_metrics(client, parent)
    assert merged["forward/test_nan_out.worst_ratio"] == math.inf and merged["summary.worst_ratio"] == math.inf
    assert merged["forward/test_nan_out.max_abs_err"] == math.inf and merged["forward/test_ok.worst_ratio"] == 0.25
    assert from_store(-STORED_INF) == -math.inf and from_store(1e308) == 1e308 and math.isnan(from_store(math.nan))

    assert tracking_cli.main(["history", "pkg:Inf", "--tracking-uri", store, "--format", "json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["worst_ratio"] == "inf"
    assert tracking_cli.main(["history", "pkg:Inf", "--tracking-uri", store]) == 0
    assert " inf " in capsys.readouterr().out and "1.79769e+308" not in capsys.readouterr().out
    fixed = RunSummary(**{**summary.__dict__, "results": [
        CheckResult(nodeid="s::test_nan_out", suite="forward", check="test_nan_out", outcome="passed", worst_ratio=0.5),
        results[1]]})
    assert tracking.log_invocation(fixed, tracking_uri=store).run_id
    time.sleep(0.002)
    rc = tracking_cli.main(["compare", out.run_id, "pkg:Inf@latest", "--tracking-uri", store, "--format", "json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 1, doc
    row = next(r for r in doc["rows"] if r["check"] == "forward/test_nan_out" and r["metric"] == "worst_ratio")
    assert row["a"] == "inf" and row["b"] == 0.5
    assert {"check": "(invocation)", "metric": "summary.worst_ratio", "a": "inf", "b": 0.5, "noise": None} in doc["rows"]


def test_experiment_opens_on_its_runs_and_a_chosen_kind_is_kept(store: str, tmp_path: Path) -> None:
    client = client_for(store)
    # an experiment bnverify did not create (its artifacts in tmp_path, not ./mlruns)
    exp_id = client.create_experiment("made-elsewhere", artifact_location=(tmp_path / "elsewhere").as_uri())
    assert tracking.log_invocation(make_summary(), tracking_uri=store, experiment="made-elsewhere").run_id
    assert client.get_experiment(exp_id).tags["mlflow.experimentKind"] == "custom_model_development"
    client.set_experiment_tag(exp_id, "mlflow.experimentKind", "genai_development")  # a person's choice
    assert tracking.log_invocation(make_summary(), tracking_uri=store, experiment="made-elsewhere").run_id
    assert client.get_experiment(exp_id).tags["mlflow.experimentKind"] == "genai_development"
