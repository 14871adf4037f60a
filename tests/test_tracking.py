"""bnverify.tracking against real MLflow stores: SQLite files in tmp_path, a real
`mlflow server` (started with mlflow/serve.sh on loopback, then stopped and killed),
and a real PostgreSQL server when its binaries are installed.

No fake mlflow module: the only injected faults are "mlflow is not installed" (cannot
be produced in this environment) and the moment a real server is killed (a wrapper
around bnverify's own upload step that kills the server first).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bnverify import tracking
from bnverify.results import CheckResult, RunSummary
from bnverify.tracking import warmup
from bnverify.tracking.config import is_http_uri
from bnverify.tracking.plan import batches, plan_invocation
from bnverify.tracking.store import open_store

REPO = Path(__file__).resolve().parent.parent
SERVE = REPO / "mlflow" / "serve.sh"
SUITES = ("forward", "backward", "modes", "invariance", "fingerprint", "convergence")
COMMIT = "0123456789abcdef0123456789abcdef01234567"


# --------------------------------------------------------------------------- helpers


def make_summary(
    target: str = "pkg.mod:MyBN",
    *,
    fail: bool = True,
    commit: str | None = COMMIT,
    per_suite: tuple[int, ...] = (10, 10, 8, 6, 4, 2),
    ratio_shift: float = 0.0,
    own_plots: bool = True,
) -> RunSummary:
    """A 40-check summary: one failure in `modes`, one skip in `invariance`, and
    per-epoch series in `convergence`; pytest-style ids with [, ], :: and spaces.

    ``own_plots``: the convergence checks attach a plot of their own, as the real suite does
    (so no series plot is drawn for them; drawing costs about a second per invocation)."""
    results = []
    for suite, n in zip(SUITES, per_suite):
        for i in range(n):
            outcome = "passed"
            if fail and suite == "modes" and i == 0:
                outcome = "failed"
            if suite == "invariance" and i == 5:
                outcome = "skipped"
            r = CheckResult(
                nodeid=f"bnverify/suites/test_bn_{suite}.py::TestBN::test_{suite}_{i}[float32-(8, 3)]",
                suite=suite,
                check=f"test_{suite}_{i}[float32-(8, 3)]",
                outcome=outcome,
                duration_s=0.01 * i,
                worst_ratio=0.1 * i + ratio_shift,
                max_abs_err=1e-7 * i,
                message="running_var: expected unbiased (m/(m-1)), got biased" if outcome == "failed" else "",
                metrics={"tol.atol": 1e-6, "cond": 3.0},
            )
            if suite == "convergence":
                r.series = {
                    "test_acc": [0.5 + 0.03 * e for e in range(15)],
                    "train_loss": [1.0 / (e + 1) for e in range(15)],
                }
                if own_plots:
                    r.details["artifacts"] = {"plots/convergence.png": "convergence.png"}
            results.append(r)
    return RunSummary(
        target=target,
        kind="torch-module",
        convention="torch",
        tier="quick",
        device="cpu",
        seed=1234,
        params={"momentum": 0.1, "eps": 1e-5, "suites": ["forward", "backward"]},
        tags={"target_git_commit": commit} if commit else {},
        results=results,
        duration_s=12.5,
    )


def client_for(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def runs_of(uri: str, invocation_id: str | None = None, experiment: str = "bnverify") -> list[Any]:
    """Active runs of the experiment (optionally of one invocation)."""
    c = client_for(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return []
    flt = f"tags.`bnverify.invocation_id` = '{invocation_id}'" if invocation_id else ""
    return list(c.search_runs([exp.experiment_id], filter_string=flt, max_results=5000))


def parents(runs: list[Any]) -> list[Any]:
    return [r for r in runs if r.data.tags.get("bnverify.role") == "invocation"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def isolate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Own BNVERIFY_HOME, no inherited tracking settings: nothing touches the repo's .bnverify."""
    home = tmp_path / "home"
    monkeypatch.setenv("BNVERIFY_HOME", str(home))
    for var in ("MLFLOW_TRACKING_URI", "BNVERIFY_EXPERIMENT", "BNVERIFY_ARTIFACT_ROOT", *tracking.HTTP_DEFAULTS):
        monkeypatch.delenv(var, raising=False)
    return home


def make_migrated_db(folder: Path) -> Path:
    """A SQLite store migrated once (the migration costs seconds; copies cost nothing)."""
    db = folder / "mlflow.db"
    with tracking.query_context(), open_store("sqlite:///" + db.as_posix(), None):
        pass
    con = sqlite3.connect(str(db))
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return db


def copy_store(tmp_path: Path, migrated: Path) -> str:
    """A fresh copy of the migrated store: its URI."""
    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    shutil.copyfile(migrated, db)
    return "sqlite:///" + db.as_posix()


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return isolate(tmp_path, monkeypatch)


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_migrated_db(tmp_path_factory.mktemp("template"))


@pytest.fixture
def store(tmp_path: Path, migrated_db: Path) -> str:
    return copy_store(tmp_path, migrated_db)


class Server:
    """`mlflow/serve.sh` on a free loopback port, in its own process group."""

    def __init__(self, home: Path, *args: str, env: dict[str, str] | None = None, ui: bool = False) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = home.parent / f"server-{self.port}.log"
        home.mkdir(parents=True, exist_ok=True)
        full_env = {**os.environ, "BNVERIFY_HOME": str(home), "PYTHON": sys.executable, **(env or {})}
        if ui:  # `bnverify ui` on the default store of that home
            cmd = [sys.executable, "-m", "bnverify.tracking_cli", "ui", "--port", str(self.port), *args]
        else:
            cmd = ["bash", str(SERVE), "--port", str(self.port), *args]
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                cmd,
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_healthy(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve.sh exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            with contextlib.suppress(OSError), urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                if r.read().strip() == b"OK":
                    return
            time.sleep(0.2)
        raise AssertionError(f"server not healthy after {timeout} s:\n{self.log.read_text()[-3000:]}")

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)


def processes_with(marker: str) -> list[int]:
    """Live processes whose environment holds ``marker`` (children inherit it)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker.encode() in (proc / "environ").read_bytes():
                if (proc / "stat").read_text().split(") ", 1)[1][0] != "Z":  # zombies have ended
                    found.append(int(proc.name))
        except OSError:
            continue
    return found


def listening_addresses(port: int) -> set[str]:
    """The IPv4 addresses a TCP socket listens on at ``port`` (from /proc/net/tcp)."""
    out = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, hexport = local.split(":")
        if state == "0A" and int(hexport, 16) == port:
            out.add(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
    return out


@contextlib.contextmanager
def running_server(home: Path, *args: str, env: dict[str, str] | None = None, ui: bool = False) -> Iterator[Server]:
    srv = Server(home, *args, env=env, ui=ui)
    try:
        srv.wait_healthy()
        yield srv
    finally:
        srv.kill()


# --------------------------------------------------------------------------- configuration


def test_tracking_uri_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BNVERIFY_HOME")
    monkeypatch.chdir(tmp_path)
    assert tracking.default_tracking_uri() == f"sqlite:///{tmp_path.as_posix()}/.bnverify/mlflow.db"
    monkeypatch.setenv("BNVERIFY_HOME", str(tmp_path / "h"))
    assert tracking.default_tracking_uri() == f"sqlite:///{tmp_path.as_posix()}/h/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    assert tracking.default_tracking_uri() == "http://127.0.0.1:9"
    assert tracking.resolve_tracking_uri(None) == "http://127.0.0.1:9"
    assert tracking.resolve_tracking_uri("sqlite:////x/y.db") == "sqlite:////x/y.db"
    assert tracking.resolve_tracking_uri("runs.db") == f"sqlite:///{tmp_path.as_posix()}/runs.db"
    assert tracking.resolve_experiment(None) == "bnverify"
    monkeypatch.setenv("BNVERIFY_EXPERIMENT", "team")
    assert tracking.resolve_experiment(None) == "team"
    assert tracking.resolve_experiment("mine") == "mine"


def test_mlflow_folder_is_never_a_python_package() -> None:
    """SPEC §1 / STYLE facts: mlflow/ must not shadow the real library."""
    assert not [p for p in (REPO / "mlflow").rglob("*.py")]
    out = subprocess.run(
        [sys.executable, "-c", "import mlflow; print(mlflow.__file__)"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out.endswith(os.path.join("mlflow", "__init__.py")) and "site-packages" in out
    assert tracking.mlflow_available()


def test_serve_script_help_and_loopback_guard(tmp_path: Path) -> None:
    env = {**os.environ, "BNVERIFY_HOME": str(tmp_path / "h")}
    shown = subprocess.run(["bash", str(SERVE), "--help"], capture_output=True, text=True, env=env, check=True)
    assert "127.0.0.1" in shown.stdout and "--backend-store-uri" in shown.stdout
    refused = subprocess.run(["bash", str(SERVE), "--host", "0.0.0.0"], capture_output=True, text=True, env=env,
                             check=False)
    assert refused.returncode == 2 and "BNVERIFY_SERVER_ALLOW_REMOTE=1" in refused.stderr
    assert not (tmp_path / "h").exists()  # refused before creating anything


# --------------------------------------------------------------------------- naming and batching


def test_metric_names_are_sanitised_and_split_back() -> None:
    from mlflow.utils.validation import _validate_metric_name

    summary = make_summary()
    summary.results.append(
        CheckResult(
            nodeid="suites/x.py::T::test_odd[a/b-c::d é]",
            suite="odd/suite",
            check="T::test_odd[a/b-c::d é]",
            outcome="passed",
            metrics={"x.y/z": 1.0, "bad value": "nan-string"},  # type: ignore[dict-item]
        )
    )
    plan = plan_invocation(summary, "inv")
    parent_keys = {k for k, _, _ in plan.parent.metrics}
    child_keys = {f"{suite}/{k}" for suite, child in plan.children.items() for k, _, _ in child.metrics
                  if not k.startswith("suite.")}
    keys = parent_keys | child_keys  # as `compare` merges them (query.invocation_metrics)
    for key in keys | {k for child in plan.children.values() for k, _, _ in child.metrics}:
        _validate_metric_name(key)  # raises on a name MLflow would refuse
    assert "forward/test_forward_0.float32-_8_ 3_.pass" in parent_keys
    # the parent holds per check only pass and worst_ratio; the rest is on the suite's run
    assert {k.rsplit(".", 1)[1] for k in parent_keys if not k.startswith("summary.")} == {"pass", "worst_ratio"}
    assert "forward/test_forward_3.float32-_8_ 3_.max_abs_err" in child_keys - parent_keys
    for key in keys:
        parts = tracking.split_metric_key(key)
        if key.startswith("summary."):
            assert parts is None
        else:
            assert parts is not None and "/" not in parts[0] and "." not in parts[2]
    odd = [k for k in keys if k.startswith("odd_suite/")]
    assert odd and all(tracking.split_metric_key(k)[0] == "odd_suite" for k in odd)
    assert "odd_suite/T/test_odd.a/b-c/d _.x_y_z" in keys
    # a skipped check has no pass metric (never a silent 0) but a skipped one (on its suite's run)
    assert "invariance/test_invariance_5.float32-_8_ 3_.pass" not in keys
    assert "invariance/test_invariance_5.float32-_8_ 3_.skipped" in child_keys


def test_batches_respect_mlflow_limits() -> None:
    metrics = [(f"m{i}", float(i), 0) for i in range(2500)]
    params = {f"p{i}": "v" * 7000 for i in range(230)}
    tags = {f"t{i}": "w" * 9000 for i in range(150)}
    chunks = list(batches(metrics, params, tags))
    assert sum(len(m) for m, _, _ in chunks) == 2500
    assert sum(len(p) for _, p, _ in chunks) == 230
    assert sum(len(t) for _, _, t in chunks) == 150
    for m, p, t in chunks:
        assert len(m) <= 1000 and len(p) <= 100 and len(t) <= 100 and len(m) + len(p) + len(t) <= 1000
        assert all(len(v) <= 6000 for _, v in p) and all(len(v) <= 8000 for _, v in t)
        size = sum(len(k) + len(v) for k, v in p + t) + sum(len(k) + 30 for k, _, _ in m)
        assert size < 1_000_000


# --------------------------------------------------------------------------- logging to a real store


def test_log_invocation_writes_parent_children_tags_metrics_artifacts(store: str, tmp_path: Path) -> None:
    fingerprint = tmp_path / "fingerprint.json"
    fingerprint.write_text(json.dumps({"momentum": "update_fraction"}))
    summary = make_summary(own_plots=False)
    out = tracking.log_invocation(
        summary,
        tracking_uri=store,
        artifacts={
            "report.txt": "40 checks, 1 failed",
            "junit.xml": b"<testsuites/>",
            "fingerprint.json": fingerprint,
            "plots/loss.png": b"\x89PNG\r\n",
            "../escape.txt": "stays inside the run",
        },
    )
    assert out.run_id and out.spooled is None, out.message
    c = client_for(store)
    parent = c.get_run(out.run_id)
    t = parent.data.tags
    assert parent.info.run_name == "FAIL 1/39 · pkg.mod:MyBN · quick"  # the verdict first: never cut off
    assert parent.info.status == "FAILED"  # the verdict, as STYLE habit 11 asks
    assert {k: t[k] for k in ("target", "kind", "convention", "tier", "device", "verdict")} == {
        "target": "pkg.mod:MyBN",
        "kind": "torch-module",
        "convention": "torch",
        "tier": "quick",
        "device": "cpu",
        "verdict": "failed",
    }
    assert t["git.commit"] == COMMIT and t["mlflow.source.git.commit"] == COMMIT
    assert t["host"] == socket.gethostname()
    for key in ("version.python", "version.torch", "version.bnverify", "version.mlflow"):
        assert t[key] and t[key] != "not installed", key
    assert t["bnverify.complete"] == "true" and len(t["bnverify.invocation_id"]) == 32
    note = t["mlflow.note.content"]
    assert note.startswith("**FAIL 1/39** `pkg.mod:MyBN`\n\n**Failed (1):**\n- `modes/test_modes_0[float32-(8, 3)]` err/tol **0**: ")
    assert "running_var" in note.splitlines()[3]  # the failed check comes before the counts and the skips
    assert note.index("skipped `invariance/") > note.index("passed 38")
    # MLflow 3's UI opens a custom-model experiment on its runs, not the GenAI overview
    assert c.get_experiment_by_name("bnverify").tags["mlflow.experimentKind"] == "custom_model_development"
    assert parent.data.params["seed"] == "1234" and parent.data.params["momentum"] == "0.1"
    m = parent.data.metrics
    assert m["summary.total"] == 40 and m["summary.failed"] == 1 and m["summary.skipped"] == 1
    assert m["summary.pass"] == 0
    assert m["modes/test_modes_0.float32-_8_ 3_.pass"] == 0
    assert m["forward/test_forward_3.float32-_8_ 3_.worst_ratio"] == pytest.approx(0.3)
    assert "forward/test_forward_3.float32-_8_ 3_.tol_atol" not in m  # a check's own metrics: on its suite's run

    runs = runs_of(store, t["bnverify.invocation_id"])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == out.run_id]
    assert sorted(r.data.tags["suite"] for r in children) == sorted(SUITES)
    assert len(runs) == 1 + len(SUITES)
    modes = next(r for r in children if r.data.tags["suite"] == "modes")
    assert modes.info.run_name == "FAIL 1/8 · modes · pkg.mod:MyBN" and modes.info.status == "FAILED"
    forward = next(r for r in children if r.data.tags["suite"] == "forward")
    assert forward.data.metrics["test_forward_3.float32-_8_ 3_.tol_atol"] == pytest.approx(1e-6)
    assert modes.data.metrics["suite.failed"] == 1 and modes.data.metrics["test_modes_0.float32-_8_ 3_.pass"] == 0
    conv = next(r for r in children if r.data.tags["suite"] == "convergence")
    assert conv.info.status == "FINISHED"
    hist = c.get_metric_history(conv.info.run_id, "test_convergence_1.float32-_8_ 3_.test_acc")
    assert [h.step for h in sorted(hist, key=lambda h: h.step)] == list(range(15))
    assert max(hist, key=lambda h: h.step).value == pytest.approx(0.5 + 0.03 * 14)
    assert not c.get_metric_history(out.run_id, "convergence/test_convergence_1.float32-_8_ 3_.train_loss")

    names = {f.path for f in c.list_artifacts(out.run_id)} | {f.path for f in c.list_artifacts(out.run_id, "plots")}
    assert {"summary.json", "report.txt", "junit.xml", "fingerprint.json", "escape.txt", "plots/loss.png"} <= names
    # each check's series overlaid in one plot (test_acc and train_loss of the same check)
    plots = {f.path for f in c.list_artifacts(out.run_id, "plots/series/convergence")}
    assert "plots/series/convergence/test_convergence_1_float32-_8_3.png" in plots and len(plots) == 2
    png = Path(c.download_artifacts(out.run_id, "plots/series/convergence/test_convergence_1_float32-_8_3.png",
                                    str(tmp_path / "png")))
    assert png.read_bytes().startswith(b"\x89PNG")
    # the outcome says where each artifact now is: in the store, not in a temporary folder
    assert out.artifact_uri == parent.info.artifact_uri
    assert out.artifact_location("plots/loss.png") == parent.info.artifact_uri + "/plots/loss.png"
    assert Path(out.artifact_location("plots/loss.png")[len("file://"):]).is_file()
    local = Path(c.download_artifacts(out.run_id, "summary.json", str(tmp_path / "dl")))
    back = RunSummary.from_json(local.read_text())
    assert back.verdict == "failed" and len(back.results) == 40
    assert back.tags["bnverify.invocation_id"] == t["bnverify.invocation_id"]
    # artifacts of a bnverify-made experiment live beside the SQLite file, not in ./mlruns
    exp = c.get_experiment_by_name("bnverify")
    assert exp.artifact_location == (Path(store[len("sqlite:///") :]).parent / "artifacts" / "bnverify").as_uri()


def test_more_than_1000_metrics_are_chunked(store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    calls: list[int] = []
    real = MlflowClient.log_batch

    def counting(self: Any, run_id: str, metrics: Any = (), params: Any = (), tags: Any = (), **kw: Any) -> Any:
        calls.append(len(metrics))
        assert len(metrics) <= 1000 and len(params) <= 100 and len(tags) <= 100
        return real(self, run_id, metrics=metrics, params=params, tags=tags, **kw)

    monkeypatch.setattr(MlflowClient, "log_batch", counting)
    results = [
        CheckResult(nodeid=f"s.py::test_{i}[p{i}]", suite="bench", check=f"test_{i}[p{i}]", outcome="passed",
                    worst_ratio=i / 1000, metrics={"gbps": float(i), "ms": 2.0 * i})
        for i in range(300)
    ]
    results[0].series = {"acc": [i / 2000 for i in range(1500)]}
    summary = RunSummary(target="big", kind="torch-module", convention="torch", tier="full", device="cpu",
                         seed=0, results=results, duration_s=1.0)
    out = tracking.log_invocation(summary, tracking_uri=store)
    assert out.run_id, out.message
    per_check = 5  # pass, worst_ratio, duration_s, gbps, ms: on the suite's run
    parent = client_for(store).get_run(out.run_id)
    assert len([k for k in parent.data.metrics if k.startswith("bench/")]) == 300 * 2  # pass, worst_ratio
    child = client_for(store).search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{out.run_id}'")[0]
    assert len([k for k in child.data.metrics if not k.startswith("suite.")]) == 300 * per_check + 1
    assert len(client_for(store).get_metric_history(child.info.run_id, "test_0.p0.acc")) == 1500
    assert max(calls) == 1000 and sum(calls) > 300 * per_check + 1500 + 300 * 2


def test_fresh_store_migrates_once_quietly(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "fresh" / "nested" / "mlflow.db"
    uri = "sqlite:///" + db.as_posix()
    t0 = time.perf_counter()
    out = tracking.log_invocation(make_summary(), tracking_uri=uri)
    elapsed = time.perf_counter() - t0
    assert out.run_id, out.message
    assert elapsed < 60
    con = sqlite3.connect(str(db))
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()
    err = capfd.readouterr().err
    assert "Creating initial MLflow database tables" not in err and "View run" not in err


def test_concurrent_processes_share_one_fresh_sqlite_store(tmp_path: Path) -> None:
    """4 processes open one fresh store at the same moment: one migration, one
    experiment, every run kept, no 'database is locked'."""
    db = tmp_path / "shared" / "mlflow.db"
    uri = "sqlite:///" + db.as_posix()
    go = tmp_path / "go"
    script = textwrap.dedent(
        f"""
        import json, os, sys, time
        sys.path.insert(0, {str(REPO)!r})
        from bnverify import tracking
        from bnverify.results import RunSummary
        summary = RunSummary.from_json(open(sys.argv[1]).read())
        import mlflow  # pay the import before the start line, so the opens really race
        while not os.path.exists({str(go)!r}):
            time.sleep(0.01)
        out = tracking.log_invocation(summary, tracking_uri={uri!r})
        print(json.dumps({{"run_id": out.run_id, "message": out.message}}))
        """
    )
    procs = []
    for i in range(4):
        f = tmp_path / f"summary{i}.json"
        f.write_text(make_summary(f"pkg.mod:Target{i}").to_json())
        procs.append(subprocess.Popen([sys.executable, "-c", script, str(f)], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    time.sleep(0.5)
    go.write_text("go")
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=180)
        assert p.returncode == 0, stderr[-2000:]
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    assert all(o["run_id"] for o in outs), outs
    c = client_for(uri)
    assert len([e for e in c.search_experiments() if e.name == "bnverify"]) == 1
    runs = runs_of(uri)
    assert sorted(r.data.tags["target"] for r in parents(runs)) == [f"pkg.mod:Target{i}" for i in range(4)]
    assert len(runs) == 4 * (1 + len(SUITES))
    assert {o["run_id"] for o in outs} == {r.info.run_id for r in parents(runs)}


# --------------------------------------------------------------------------- outages, spool and sync


def test_unreachable_server_spools_fast_and_sync_replays_exactly_once(store: str, home: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    summary = make_summary()
    t0 = time.perf_counter()
    out = tracking.log_invocation(summary, tracking_uri=dead, artifacts={"report.txt": "r"})
    elapsed = time.perf_counter() - t0
    assert out.run_id is None and out.spooled is not None
    assert elapsed < 30, f"gave up after {elapsed:.1f} s"
    assert "WARNING" in out.message and "bnverify sync" in out.message and dead in out.message
    assert out.spooled.parent == home / "spool"
    assert {p.name for p in out.spooled.iterdir()} == {"summary.json", "meta.json", "artifacts"}
    assert (out.spooled / "artifacts" / "report.txt").read_text() == "r"
    for var in tracking.HTTP_DEFAULTS:  # the short settings were scoped to the call
        assert var not in os.environ
    keep = out.spooled.parent.parent / "spool-copy"
    shutil.copytree(out.spooled, keep)
    inv = json.loads((out.spooled / "meta.json").read_text())["invocation_id"]

    first = tracking.sync(store)
    assert first.ok and len(first.replayed) == 1 and first.replayed[0][0] == inv
    assert not out.spooled.exists()
    runs = runs_of(store, inv)
    assert len(parents(runs)) == 1 and len(runs) == 1 + len(SUITES)
    run = client_for(store).get_run(first.replayed[0][1])
    assert run.info.end_time == json.loads((keep / "meta.json").read_text())["end_ms"]
    assert {f.path for f in client_for(store).list_artifacts(run.info.run_id)} >= {"report.txt", "summary.json"}

    second = tracking.sync(store)
    assert second.ok and not second.replayed and not second.skipped
    assert second.lines()[0].startswith("nothing to sync")
    # the same spool entry replayed again (say, restored from a backup): skipped, no duplicate
    shutil.copytree(keep, out.spooled)
    third = tracking.sync(store)
    assert third.skipped == [inv] and not third.replayed and not out.spooled.exists()
    assert len(runs_of(store, inv)) == 1 + len(SUITES)


def test_without_mlflow_results_are_spooled(store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # the one fault that cannot be produced for real here: mlflow missing
    with monkeypatch.context() as m:
        for module in (tracking.invocation, tracking.spool):
            m.setattr(module, "mlflow_available", lambda: False)
        out = tracking.log_invocation(make_summary(), tracking_uri=store)
        assert out.run_id is None and out.spooled and "mlflow is not installed" in out.message
        report = tracking.sync(store)
        assert not report.ok and report.pending
    assert tracking.sync(store).replayed


def test_prepared_worker_writes_the_run_and_ends(store: str) -> None:
    assert tracking.prepare(store) is True
    worker = warmup._WORKERS[(store, "bnverify")]
    assert tracking.prepare(store) is True and warmup._WORKERS[(store, "bnverify")] is worker  # one per store
    time.sleep(0.2)
    out = tracking.log_invocation(make_summary(), tracking_uri=store, artifacts={"report.txt": "via the worker"})
    assert out.run_id, out.message
    assert (store, "bnverify") not in warmup._WORKERS and worker.proc.exitcode == 0
    assert client_for(store).get_run(out.run_id).data.tags["bnverify.complete"] == "true"
    assert "report.txt" in {f.path for f in client_for(store).list_artifacts(out.run_id)}
    # a prepared worker whose store is down: spooled, bounded in time
    dead = f"http://127.0.0.1:{free_port()}"
    tracking.prepare(dead)
    t0 = time.perf_counter()
    out = tracking.log_invocation(make_summary(), tracking_uri=dead)
    assert out.spooled and time.perf_counter() - t0 < 30


def test_tracking_timeout_bounds_the_wait_and_kills_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that accepts connections and never answers: the worker's warm-up hangs on it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        url = f"http://127.0.0.1:{hung.getsockname()[1]}"
        monkeypatch.setenv("BNVERIFY_TRACKING_TIMEOUT", "2")
        assert tracking.prepare(url) is True
        worker = warmup._WORKERS[(url, "bnverify")]
        t0 = time.perf_counter()
        out = tracking.log_invocation(make_summary(), tracking_uri=url)
        elapsed = time.perf_counter() - t0
    assert out.spooled and "did not finish within 2 s" in out.message and "BNVERIFY_TRACKING_TIMEOUT" in out.message
    assert 2 <= elapsed < 10, elapsed
    assert not worker.alive() and worker.proc.exitcode is not None


def test_worker_does_not_outlive_its_controller(store: str, tmp_path: Path) -> None:
    """A controller that prepares and exits without logging (a crash, an interrupted run)."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from bnverify import tracking
        from bnverify.tracking import warmup
        assert tracking.prepare({store!r})
        print(warmup._WORKERS[({store!r}, "bnverify")].proc.pid, flush=True)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    pid = int(done.stdout.split()[-1])
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_worker_only_where_spawn_cannot_rerun_a_script(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import sysconfig
    import types

    def main(name: str | None = None, file: str | None = None) -> types.ModuleType:
        mod = types.ModuleType("__main__")
        mod.__spec__ = types.SimpleNamespace(name=name) if name else None  # type: ignore[assignment]
        if file:
            mod.__file__ = file
        return mod

    for module, safe in (
        (main("pytest.__main__"), True),  # python -m pytest
        (main(), True),  # python -c, interactive
        (main(file=str(Path(sysconfig.get_path("scripts")) / "bnverify")), True),  # a console script
        (main("mychecks"), False),  # python -m mychecks
        (main(file=str(tmp_path / "run_checks.py")), False),  # a user's script: maybe unguarded
    ):
        monkeypatch.setitem(sys.modules, "__main__", module)
        assert warmup._spawn_is_safe() is safe, module
    assert tracking.prepare(f"http://127.0.0.1:{free_port()}") is False and not warmup._WORKERS


def test_server_hung_then_killed_mid_run_spools_and_sync_replays_once(
    migrated_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real `mlflow server` (mlflow/serve.sh on loopback): healthy, then stopped
    (SIGSTOP: a hung server), then killed while an invocation is being written."""
    home = tmp_path / "server-home"
    home.mkdir()
    shutil.copyfile(migrated_db, home / "mlflow.db")  # serve.sh's default local store
    # the server the checks log to, and (started alongside, to save a start-up) the one
    # that comes back later: `bnverify ui` on the same local store and artifact folder
    srv = Server(home)
    marker = f"ui-{os.getpid()}-{time.time_ns()}"
    srv2 = Server(home, ui=True, env={"BNVERIFY_TEST_UI_MARKER": marker})
    try:
        srv.wait_healthy()
        srv2.wait_healthy()
        url = srv.url
        ok = tracking.log_invocation(make_summary("pkg:Healthy"), tracking_uri=url, artifacts={"report.txt": "a"})
        assert ok.run_id, ok.message
        # what the UI reads, over the server's REST API: the experiment's kind, the run's name,
        # description and metric keys, and where its artifacts are
        rest = client_for(url)
        assert rest.get_experiment_by_name("bnverify").tags["mlflow.experimentKind"] == "custom_model_development"
        run = rest.get_run(ok.run_id)
        assert run.info.run_name == "FAIL 1/39 · pkg:Healthy · quick"
        assert run.data.tags["mlflow.note.content"].startswith("**FAIL 1/39** `pkg:Healthy`\n\n**Failed (1):**")
        assert {k.rsplit(".", 1)[1] for k in run.data.metrics if "/" in k} == {"pass", "worst_ratio"}
        assert ok.artifact_location("report.txt") == run.info.artifact_uri + "/report.txt"
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/")

        # hung: connections are accepted, nothing answers; the user asked for 1 s timeouts
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
        srv.signal(signal.SIGSTOP)
        t0 = time.perf_counter()
        hung = tracking.log_invocation(make_summary("pkg:Hung"), tracking_uri=url)
        hung_s = time.perf_counter() - t0
        srv.signal(signal.SIGCONT)
        monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT")
        assert hung.spooled and hung_s < 30, (hung_s, hung.message)
        assert "timeout" in hung.message.lower() or "timed out" in hung.message.lower()

        # killed mid-run: after the runs and metrics are in, before the artifacts
        real_upload = tracking.store._upload_artifacts

        def kill_then_upload(client: Any, run_id: str, folder: Path) -> None:
            srv.kill()
            real_upload(client, run_id, folder)

        monkeypatch.setattr(tracking.store, "_upload_artifacts", kill_then_upload)
        t0 = time.perf_counter()
        mid = tracking.log_invocation(make_summary("pkg:Killed"), tracking_uri=url, artifacts={"report.txt": "k"})
        mid_s = time.perf_counter() - t0
        monkeypatch.setattr(tracking.store, "_upload_artifacts", real_upload)
        assert mid.run_id is None and mid.spooled and mid_s < 30, (mid_s, mid.message)

        t0 = time.perf_counter()
        dead = tracking.log_invocation(make_summary("pkg:Dead"), tracking_uri=url)
        dead_s = time.perf_counter() - t0
        assert dead.spooled and dead_s < 30, (dead_s, dead.message)
        print(f"\ngive-up times: hung server (1 s timeout) {hung_s:.1f} s, killed mid-run {mid_s:.1f} s, "
              f"dead server {dead_s:.1f} s")

        # the partial run left by the kill is in the store, without the completion tag
        killed_id = mid.spooled.name
        partial = parents(runs_of(srv2.url, killed_id))
        assert len(partial) == 1 and "bnverify.complete" not in partial[0].data.tags

        first = tracking.sync(srv2.url)
        assert first.ok and len(first.replayed) == 3, first.lines()
        for spooled in (hung, mid, dead):
            assert spooled.spooled is not None and not spooled.spooled.exists()
            runs = runs_of(srv2.url, spooled.spooled.name)
            assert len(parents(runs)) == 1 and len(runs) == 1 + len(SUITES), spooled.spooled.name
            assert parents(runs)[0].data.tags["bnverify.complete"] == "true"
        killed_run = parents(runs_of(srv2.url, killed_id))[0]
        assert killed_run.info.run_id != partial[0].info.run_id  # the partial one was replaced
        assert {f.path for f in client_for(srv2.url).list_artifacts(killed_run.info.run_id)} >= {"report.txt"}
        assert len(parents(runs_of(srv2.url))) == 4
        second = tracking.sync(srv2.url)
        assert second.ok and not second.replayed and not second.skipped
        assert len(parents(runs_of(srv2.url))) == 4 and len(runs_of(srv2.url)) == 4 * (1 + len(SUITES))

        # `bnverify ui`: loopback only, the URL printed once it answered, and SIGTERM to the command
        # alone (not its group: the server runs in a group of its own) leaves no process behind
        assert listening_addresses(srv2.port) == {"127.0.0.1"}
        assert f"MLflow UI ready: {srv2.url}" in srv2.log.read_text()
        assert len(processes_with(marker)) >= 2  # bnverify ui, mlflow ui, uvicorn and its worker
        t0 = time.perf_counter()
        os.kill(srv2.proc.pid, signal.SIGTERM)
        assert srv2.proc.wait(timeout=30) == 0
        stop_s = time.perf_counter() - t0
        assert processes_with(marker) == [], srv2.log.read_text()[-2000:]
        print(f"bnverify ui stopped with all its processes in {stop_s:.1f} s")
    finally:
        srv.kill()
        srv2.kill()


# --------------------------------------------------------------------------- team mode: PostgreSQL


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(candidates[-1]) if candidates else None


@contextlib.contextmanager
def postgres_server() -> Iterator[tuple[str, Any]]:
    """A throw-away PostgreSQL cluster on a free loopback port; yields (URI, stop)."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    import importlib.util

    if importlib.util.find_spec("psycopg"):
        scheme = "postgresql"  # SQLAlchemy 2.1's default PostgreSQL driver is psycopg 3
    elif importlib.util.find_spec("psycopg2"):
        scheme = "postgresql+psycopg2"
    else:
        pytest.skip('team mode needs a PostgreSQL driver: pip install "psycopg[binary]" (or psycopg2-binary)')
    prefix: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="bnverify-pg-"))
    if os.geteuid() == 0:  # initdb refuses to run as root
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server")
        os.chown(base, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    data = base / "data"
    try:
        subprocess.run([*prefix, initdb, "-D", str(data), "--auth=trust", "-U", "postgres"],
                       check=True, capture_output=True, timeout=120)
        opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-o", opts, "-l", str(base / "log"), "-w", "start"],
                       check=True, capture_output=True, timeout=120)

        def stop() -> None:
            subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"],
                           capture_output=True, timeout=60, check=False)  # stopping twice is fine

        import sqlalchemy

        engine = sqlalchemy.create_engine(f"{scheme}://postgres@127.0.0.1:{port}/postgres", isolation_level="AUTOCOMMIT")
        with engine.connect() as con:
            con.execute(sqlalchemy.text("CREATE DATABASE bnverify"))
        engine.dispose()
        try:
            yield f"{scheme}://postgres@127.0.0.1:{port}/bnverify", stop
        finally:
            stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_team_mode_postgres_backend_and_shared_artifact_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = tmp_path / "shared-artifacts"
    with postgres_server() as (pg_uri, stop_pg):
        # direct to PostgreSQL (no server): artifacts under $BNVERIFY_ARTIFACT_ROOT
        monkeypatch.setenv("BNVERIFY_ARTIFACT_ROOT", str(shared / "direct"))
        direct = tracking.log_invocation(make_summary("pkg:Direct"), tracking_uri=pg_uri, artifacts={"report.txt": "d"})
        assert direct.run_id, direct.message
        assert (shared / "direct" / "bnverify" / direct.run_id / "artifacts" / "report.txt").read_text() == "d"

        # the documented team server: serve.sh on PostgreSQL with a shared artifact root
        with running_server(tmp_path / "team-home", "--backend-store-uri", pg_uri,
                            "--artifacts-destination", str(shared / "served")) as srv:
            out = tracking.log_invocation(make_summary("pkg:Team"), tracking_uri=srv.url,
                                          artifacts={"report.txt": "t"}, experiment="bnverify-team")
            assert out.run_id, out.message
            exp = client_for(srv.url).get_experiment_by_name("bnverify-team")
            assert exp.artifact_location.startswith("mlflow-artifacts:")
            files = list((shared / "served").rglob(f"{out.run_id}/artifacts/report.txt"))
            assert len(files) == 1 and files[0].read_text() == "t"
            assert len(parents(runs_of(pg_uri, experiment="bnverify-team"))) == 1  # the same database
            # the server is the team's UI: bnverify ui only points at it
            assert is_http_uri(srv.url)

        # PostgreSQL down: spooled in seconds (mlflow alone retries engine creation for ~100 s)
        stop_pg()
        t0 = time.perf_counter()
        down = tracking.log_invocation(make_summary("pkg:Down"), tracking_uri=pg_uri)
        assert down.spooled and time.perf_counter() - t0 < 30, down.message
