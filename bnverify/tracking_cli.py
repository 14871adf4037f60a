"""``bnverify sync | ui | compare | history``: the tracking side of the CLI.

``bnverify/cli.py`` calls :func:`add_commands` on its sub-parsers; each command sets
``func`` to a handler ``(args) -> int``.  Exit codes: 0 fine, 1 differences (compare)
or spooled invocations that could not be replayed (sync), 2 usage or configuration
error (unknown run id or target, unreachable store), with one line on stderr.

``python -m bnverify.tracking_cli COMMAND ...`` runs the same commands on their own.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from bnverify import tracking
from bnverify.tables import table
from bnverify.tracking.config import describe_error, is_http_uri, redact, sqlite_path
from bnverify.tracking.plan import from_store
from bnverify.tracking.query import invocation_metrics
from bnverify.tracking.store import open_store

if TYPE_CHECKING:  # pragma: no cover - typing only
    from mlflow.entities import Run

    from mlflow import MlflowClient

_URI_HELP = (
    "MLflow tracking URI (sqlite:///PATH, postgresql://..., http://HOST:PORT). "
    "Default: $MLFLOW_TRACKING_URI, else sqlite:///<$BNVERIFY_HOME or ./.bnverify>/mlflow.db"
)
_EXP_HELP = "MLflow experiment. Default: $BNVERIFY_EXPERIMENT, else 'bnverify'"
_RUN_ID = re.compile(r"[0-9a-f]{32}")
_COMPARED_TAGS = (
    "target",
    "kind",
    "convention",
    "tier",
    "device",
    "verdict",
    tracking.TAG_COMMIT,
    "host",
    "version.bnverify",
    "version.torch",
    "version.numpy",
    "version.python",
)


class UsageError(Exception):
    """Reported as one line on stderr with exit code 2."""


# --------------------------------------------------------------------------- registration


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--tracking-uri", metavar="URI", default=None, help=_URI_HELP)
    common.add_argument("--experiment", metavar="NAME", default=None, help=_EXP_HELP)
    return common


def add_commands(subparsers: Any) -> None:
    """Register ``sync``, ``ui``, ``compare`` and ``history`` on an argparse sub-parsers object."""
    common = _common()

    p = subparsers.add_parser(
        "sync",
        parents=[common],
        help="replay spooled results into the tracking store, exactly once",
        description=(
            "Replay invocations spooled while the tracking store was unreachable "
            "(<$BNVERIFY_HOME or ./.bnverify>/spool) into the current store. An invocation "
            "already in the store is skipped, a partial one is replaced, and each entry leaves "
            "the spool once it is in, so running sync twice adds nothing."
        ),
    )
    p.add_argument("--list", action="store_true", help="only list what is spooled. Default: %(default)r")
    p.set_defaults(func=cmd_sync)

    p = subparsers.add_parser(
        "ui",
        parents=[common],
        help="open the MLflow UI on the configured store",
        description=(
            "Run `mlflow ui` on the configured store, bound to 127.0.0.1 unless --host says otherwise. "
            "The URL is printed once the server answers; Ctrl-C or SIGTERM stops the server and all its "
            "workers. A busy port is an error (exit code 2)."
        ),
    )
    p.add_argument("--port", type=_port, default=5000, metavar="N", help="port to listen on. Default: %(default)r")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        metavar="ADDR",
        help="address to listen on; anything but loopback is reachable from other machines (a warning is "
        "printed: MLflow's server has no authentication). Default: %(default)r",
    )
    p.add_argument(
        "--print-only", action="store_true", help="print the command and URL, start nothing. Default: %(default)r"
    )
    p.set_defaults(func=cmd_ui)

    p = subparsers.add_parser(
        "compare",
        parents=[common],
        help="show only the checks and metrics that differ between two runs",
        description=(
            "Compare two invocations check by check. A and B are run ids, or TARGET@latest, "
            "TARGET@latest~N (the Nth before the latest), TARGET@COMMIT (a commit prefix), or "
            "TARGET alone (its latest run). Exit code 1 when something differs."
        ),
    )
    p.add_argument("a", metavar="A", help="run id or TARGET@latest|TARGET@latest~N|TARGET@COMMIT")
    p.add_argument("b", metavar="B", help="run id or TARGET@latest|TARGET@latest~N|TARGET@COMMIT")
    p.add_argument(
        "--rtol",
        type=_nonneg,
        default=0.0,
        metavar="X",
        help="relative difference below which non-timing metrics count as equal. Default: %(default)r",
    )
    p.add_argument(
        "--atol",
        type=_nonneg,
        default=0.0,
        metavar="X",
        help="absolute difference below which non-timing metrics count as equal. Default: %(default)r",
    )
    p.add_argument(
        "--timings", action="store_true", help="also compare timing metrics (*_s, *time*). Default: %(default)r"
    )
    p.add_argument(
        "--timing-rtol",
        type=_nonneg,
        default=0.10,
        metavar="X",
        help="relative difference below which timings count as equal. Default: %(default)r",
    )
    p.add_argument("--format", choices=("table", "json"), default="table", help="Default: %(default)r")
    p.set_defaults(func=cmd_compare)

    p = subparsers.add_parser(
        "history",
        parents=[common],
        help="verdicts and key metrics of one target over time",
        description="List the recorded invocations of TARGET, newest first.",
    )
    p.add_argument("target", metavar="TARGET", help="the target as given to `bnverify check`")
    p.add_argument("--limit", type=_positive, default=20, metavar="N", help="rows to show. Default: %(default)r")
    p.add_argument(
        "--metric",
        action="append",
        default=[],
        metavar="KEY",
        help="add a column for this parent-run metric (e.g. convergence/test_mnist.test_acc); repeatable. "
        "Default: %(default)r",
    )
    p.add_argument("--format", choices=("table", "json"), default="table", help="Default: %(default)r")
    p.set_defaults(func=cmd_history)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range 1-65535: {value}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def _nonneg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text}")
    return value


def _fail(message: str, code: int = 2) -> int:
    print(f"bnverify: {message}", file=sys.stderr)
    return code


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


# --------------------------------------------------------------------------- sync


def cmd_sync(args: argparse.Namespace) -> int:
    if args.list:
        entries = tracking.spooled_invocations()
        if not entries:
            print(f"the spool ({tracking.spool_dir()}) is empty")
            return 0
        print(f"{len(entries)} spooled invocation(s) in {tracking.spool_dir()}:")
        rows = []
        for entry in entries:
            meta: dict[str, Any] = {}
            try:
                meta = json.loads((entry / "meta.json").read_text(encoding="utf-8"))
                summary = json.loads((entry / "summary.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                summary = {}
            rows.append([
                entry.name,
                str(summary.get("target", "?")),
                str(summary.get("verdict", "?")),
                _when(meta.get("end_ms")),
                str(meta.get("error", ""))[:80],
            ])
        print(table(rows, ["invocation", "target", "verdict", "finished", "why spooled"]))
        return 0
    report = tracking.sync(args.tracking_uri)
    for line in report.lines():
        print(line)
    if not report.ok:
        first = report.failed[0][1] if report.failed else "not all entries were tried"
        return _fail(f"sync incomplete; what failed stays spooled: {first}", 1)
    return 0


# --------------------------------------------------------------------------- ui


#: How long ``bnverify ui`` waits for the server to answer before giving up on it.
UI_START_TIMEOUT_S = 120.0
#: How long the server's processes get to end after SIGTERM before they are killed.
UI_STOP_GRACE_S = 10.0
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (only this machine can connect)."""
    import ipaddress

    if host.lower() in _LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _url_host(host: str) -> str:
    """Where to reach a server bound to ``host`` from this machine."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def port_in_use(host: str, port: int) -> str | None:
    """None when ``host:port`` can be bound now, else why not (one line).

    Binds a socket the way the server will (``SO_REUSEADDR`` set, as uvicorn does), so a
    port held only by connections in TIME_WAIT counts as free, as it does for the server.
    """
    import socket

    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        return f"cannot resolve host {host!r}: {e.strerror or e}"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as e:
            return e.strerror or str(e)
    return None


def _answers(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def _stop_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace: float = UI_STOP_GRACE_S) -> None:
    """Stop every process of the server's group: ``sig``, up to ``grace`` seconds, then SIGKILL."""
    for s in (sig, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, s)
        deadline = time.monotonic() + (grace if s != signal.SIGKILL else 5.0)
        while time.monotonic() < deadline:
            proc.poll()
            try:
                os.killpg(proc.pid, 0)  # anyone left in the group (uvicorn workers outlive their parent)?
            except (ProcessLookupError, PermissionError):
                return
            time.sleep(0.05)


_VIEW_LABEL = "bnverify runs, verdict and key metrics as columns"


def view_url(uri: str, experiment: str, base: str, *, update: bool) -> str | None:
    """The runs table of ``experiment`` in bnverify's view, on the UI at ``base``; None when
    the store has no such experiment yet or cannot be read (the UI starts all the same).

    ``update``: first give an existing experiment the tags bnverify gives the experiments it
    creates (the view, the kind), as a check would; else link to the view only if it is there.
    """
    from bnverify.tracking.plan import KEY_VIEW_TAG, ui_path
    from bnverify.tracking.store import ensure_experiment_tags, open_store, tracking_context

    try:
        with tracking_context(), open_store(uri, None) as (client, _):
            exp = client.get_experiment_by_name(experiment)
            if exp is None or exp.lifecycle_stage == "deleted":
                return None
            if update:
                ensure_experiment_tags(client, str(exp.experiment_id), exp.tags or {})
            elif KEY_VIEW_TAG not in (exp.tags or {}):
                return None
            return f"{base}/{ui_path(str(exp.experiment_id))}"
    except Exception as e:  # noqa: BLE001 - the link is a convenience; the UI starts without it
        print(f"bnverify: no link to the runs table ({describe_error(e)})", file=sys.stderr)
        return None


def cmd_ui(args: argparse.Namespace) -> int:
    """``bnverify ui``: the MLflow UI on the configured store, until Ctrl-C or SIGTERM.

    The server runs in its own process group; SIGINT, SIGTERM and SIGHUP are forwarded to
    the whole group, which is waited for (and killed after :data:`UI_STOP_GRACE_S`), so no
    uvicorn worker outlives the command.  A busy port is reported at once (exit 2), and the
    URL is printed once the server answers.
    """
    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    experiment = tracking.resolve_experiment(args.experiment)
    if is_http_uri(uri):
        print(f"{redact(uri)} is a tracking server; its UI is at {redact(uri)}")
        view = None if args.print_only else view_url(uri, experiment, redact(uri).rstrip("/"), update=False)
        if view:
            print(f"{_VIEW_LABEL}: {view}")
        return 0
    host, port = args.host, args.port
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    db = sqlite_path(uri)
    if db is not None:
        # artifacts of experiments made in the UI go beside the store, not into ./mlartifacts;
        # one worker: SQLite has one writer (and four workers take four times as long to start)
        cmd += ["--artifacts-destination", str(db.parent / "artifacts"), "--workers", "1"]
    url = f"http://{_url_host(host)}:{port}"
    if args.print_only:
        print(f"MLflow UI on {redact(uri)}: {url}")
        print("$ " + shlex.join(redact(c) for c in cmd))
        return 0
    if not tracking.mlflow_available():
        return _fail("mlflow is not installed (pip install mlflow)")
    if not is_loopback(host):
        print(
            f"bnverify: warning: the UI listens on {host}:{port}, reachable from other machines; MLflow's "
            "server has no authentication of its own (keep it on a private network or behind a proxy)",
            file=sys.stderr,
        )
    busy = port_in_use(host, port)
    if busy:
        return _fail(f"cannot serve the UI on {host}:{port}: {busy}; choose another port with --port N")
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    # bnverify needs none of MLflow's GenAI job runner: six fewer processes, a faster start
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    print(f"bnverify: starting the MLflow UI on {redact(uri)} ...", flush=True)
    view = view_url(uri, experiment, url, update=True)  # before the server: one writer at a time
    received: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        received.append(signum)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM if signum == signal.SIGHUP else signum)

    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.getsignal(s) for s in handled}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        for s in handled:
            signal.signal(s, forward)
        deadline = time.monotonic() + UI_START_TIMEOUT_S
        ready = False
        while not received and proc.poll() is None and time.monotonic() < deadline:
            if _answers(url):
                ready = True
                break
            time.sleep(0.25)
        if ready:
            print(f"MLflow UI ready: {url}  (Ctrl-C stops it)", flush=True)
            if view:
                print(f"{_VIEW_LABEL}: {view}", flush=True)
        elif not received and proc.poll() is None:
            _stop_group(proc)
            return _fail(f"the MLflow UI did not answer at {url} within {UI_START_TIMEOUT_S:.0f} s; stopped it")
        while proc.poll() is None and not received:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.5)
        code = proc.poll()
    finally:
        _stop_group(proc, signal.SIGTERM, UI_STOP_GRACE_S if proc.poll() is None else 2.0)
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received:
        return 0  # stopped on request
    if code != 0:
        return _fail(f"the MLflow UI exited with code {code} (its messages are above)", 1)
    return 0


# --------------------------------------------------------------------------- shared query helpers


def _store_missing(uri: str) -> str | None:
    db = sqlite_path(uri)
    if db is not None and not db.exists():
        return f"no tracking store at {db} yet (nothing has been logged there)"
    return None


def _parent_of(client: MlflowClient, run: Run) -> Run:
    parent_id = run.data.tags.get("mlflow.parentRunId")
    if run.data.tags.get(tracking.TAG_ROLE) == tracking.ROLE_SUITE and parent_id:
        return client.get_run(parent_id)
    return run


def resolve_ref(client: MlflowClient, experiment: str, ref: str) -> Run:
    """A run id, ``TARGET@latest``, ``TARGET@latest~N``, ``TARGET@COMMIT`` or ``TARGET`` -> parent run."""
    from mlflow.exceptions import MlflowException

    ref = ref.strip()
    if _RUN_ID.fullmatch(ref):
        try:
            return _parent_of(client, client.get_run(ref))
        except MlflowException as e:
            if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") or "not found" in str(e).lower():
                raise UsageError(f"unknown run id {ref}") from None
            raise
    target, sep, selector = ref.rpartition("@")
    if not sep:
        target, selector = ref, "latest"
    if not target:
        raise UsageError(f"not a run id or TARGET@latest: {ref!r}")
    back = re.fullmatch(r"latest(?:~(\d+))?", selector)
    if back:
        skip = int(back.group(1) or 0)
        runs = tracking.invocation_runs(client, experiment, target=target, max_results=skip + 1)
        if len(runs) > skip:
            return runs[skip]
        what = "runs" if skip == 0 else f"{skip + 1} runs"
        raise UsageError(f"no {what} of target {target!r} in experiment {experiment!r}")
    runs = tracking.invocation_runs(client, experiment, target=target, commit_prefix=selector, max_results=1)
    if runs:
        return runs[0]
    raise UsageError(f"no run of target {target!r} at commit {selector!r} in experiment {experiment!r}")


def _when(ms: Any) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(int(ms) / 1000))
    except (TypeError, ValueError, OverflowError):
        return "?"


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6g}"


def _run_query(args: argparse.Namespace, body: Any) -> int:
    """Resolve the store, run ``body(client, uri, experiment)`` under short timeouts."""
    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    experiment = tracking.resolve_experiment(args.experiment)
    missing = _store_missing(uri)
    if missing:
        return _fail(missing)
    if not tracking.mlflow_available():
        return _fail("mlflow is not installed (pip install mlflow)")
    try:
        with tracking.query_context(), open_store(uri, None, hold=False) as (client, _):
            result: int = body(client, uri, experiment)
            return result
    except UsageError as e:
        return _fail(str(e))
    except Exception as e:  # noqa: BLE001 - one line on stderr, exit 2, never a traceback
        return _fail(f"cannot read the tracking store {redact(uri)}: {_one_line(e)}")


# --------------------------------------------------------------------------- compare


def is_timing(metric: str) -> bool:
    """Timing-like metric names: compared only with ``--timings``."""
    m = metric.lower()
    return (
        m.endswith(("_s", "_ms", "_us", "_ns", "_sec", "_seconds"))
        or "time" in m
        or "throughput" in m
        or "bandwidth" in m
        or "gbps" in m
    )


@dataclass
class DiffRow:
    check: str  # "suite/check", or "(invocation)" for summary.* metrics
    metric: str
    a: float | None
    b: float | None
    noise: float | None = None  # a timing's combined 95% CI half-width (bench), when both runs measured it


#: A benchmark timing and the metric that holds its noise: the 95% CI half-width of the median.
_TIMING_NOISE = {"median_ms": "ci95_half_ms"}


def timing_noise(key: str, metric: str, ma: dict[str, float], mb: dict[str, float]) -> float | None:
    """sqrt(ci_A^2 + ci_B^2) for a bench median both runs measured with its CI, else None."""
    sibling = _TIMING_NOISE.get(metric)
    if sibling is None:
        return None
    other = key[: len(key) - len(metric)] + sibling
    ca, cb = ma.get(other), mb.get(other)
    return None if ca is None or cb is None else math.hypot(ca, cb)


def _differs(metric: str, a: float | None, b: float | None, rtol: float, atol: float = 0.0) -> bool:
    if a is None or b is None:
        return a is not b
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) != math.isnan(b)
    if math.isinf(a) or math.isinf(b):  # rtol * inf is NaN, and nothing is greater than NaN
        return a != b
    if metric in ("pass", "skipped") or metric.endswith((".pass", ".skipped", ".failed", ".passed", ".total")):
        return a != b
    return abs(a - b) > atol + rtol * max(abs(a), abs(b))


def diff_runs(
    a: Run,
    b: Run,
    *,
    rtol: float = 0.0,
    atol: float = 0.0,
    timings: bool = False,
    timing_rtol: float = 0.10,
    metrics_a: dict[str, float] | None = None,
    metrics_b: dict[str, float] | None = None,
) -> list[DiffRow]:
    """Metrics of two parent runs that differ, by check; invocation-level rows first.

    ``metrics_a``/``metrics_b``: the invocations' merged metrics
    (:func:`bnverify.tracking.query.invocation_metrics`); default the parent runs' own.
    """
    ma = a.data.metrics if metrics_a is None else metrics_a
    mb = b.data.metrics if metrics_b is None else metrics_b
    rows: list[DiffRow] = []
    for key in sorted(set(ma) | set(mb)):
        parts = tracking.split_metric_key(key)
        check, metric = (f"{parts[0]}/{parts[1]}", parts[2]) if parts else ("(invocation)", key)
        timing = is_timing(metric)
        if timing and not timings:
            continue
        va, vb = ma.get(key), mb.get(key)
        noise = timing_noise(key, metric, ma, mb) if timing else None
        if noise is not None and va is not None and vb is not None:
            if abs(vb - va) > noise:  # a bench timing: news only beyond both runs' noise
                rows.append(DiffRow(check, metric, va, vb, noise))
        elif _differs(metric, va, vb, timing_rtol if timing else rtol, 0.0 if timing else atol):
            rows.append(DiffRow(check, metric, va, vb))
    rows.sort(key=lambda r: (r.check != "(invocation)", r.check, r.metric != "pass", r.metric))
    return rows


@dataclass
class News:
    """``diff_runs``'s rows sorted by how much they matter: what changed first, noise only counted."""

    flips: list[DiffRow]  # pass -> fail and fail -> pass (metric "pass")
    crossings: list[DiffRow]  # worst_ratio moved into or out of the band just below the tolerance
    changes: list[DiffRow]  # other metrics beyond seed noise (or, with the same seed, any change)
    within_noise: set[str]  # checks whose every change is within seed noise
    same_seed: bool


def _beyond_seed_noise(a: float | None, b: float | None) -> bool:
    """A change between runs with different seeds that the seed alone does not explain (SEED_NOISE_FACTOR)."""
    from bnverify.tolerances import SEED_NOISE_FACTOR

    if a is None or b is None or math.isnan(a) or math.isnan(b) or math.isinf(a) or math.isinf(b):
        return True
    if a == b:
        return False
    if a == 0 or b == 0 or (a < 0) != (b < 0):
        return True
    return max(abs(a), abs(b)) / min(abs(a), abs(b)) >= SEED_NOISE_FACTOR


def _crossing(a: float | None, b: float | None) -> bool:
    from bnverify.tolerances import COMPARE_FAR_FROM_TOLERANCE as FAR
    from bnverify.tolerances import COMPARE_NEAR_TOLERANCE as NEAR

    if a is None or b is None:
        return False
    lo, hi = min(a, b), max(a, b)
    return lo < FAR and hi >= NEAR


def classify(rows: list[DiffRow], seed_a: Any, seed_b: Any) -> News:
    """Verdict flips, then tolerance crossings, then changes beyond seed noise; the rest only counted.

    A check with a flip is listed once, as a flip (its other rows follow it); a crossing is a worst_ratio
    of a check that did not flip.  With different seeds a change by less than ``SEED_NOISE_FACTOR`` is noise.
    """
    same_seed = seed_a is not None and str(seed_a) == str(seed_b)
    flipped = {r.check for r in rows if r.metric == "pass" and r.a is not None and r.b is not None}
    news = News([], [], [], set(), same_seed)
    moved: set[str] = set()
    for r in rows:
        if r.check in flipped:
            (news.flips if r.metric == "pass" else news.changes).append(r)
        elif r.metric == "worst_ratio" and _crossing(r.a, r.b):
            news.crossings.append(r)
        elif same_seed or r.noise is not None or r.check == "(invocation)" or _beyond_seed_noise(r.a, r.b):
            news.changes.append(r)
        else:
            moved.add(r.check)
    listed = {r.check for r in news.flips + news.crossings + news.changes}
    news.within_noise = moved - listed
    news.changes = [r for r in news.changes if r.check not in flipped] + [r for r in news.changes if r.check in flipped]
    return news


def _checks_in(metrics: dict[str, float]) -> set[str]:
    out = set()
    for key in metrics:
        parts = tracking.split_metric_key(key)
        if parts:
            out.add(f"{parts[0]}/{parts[1]}")
    return out


def _describe(run: Run) -> dict[str, Any]:
    return {
        "run_id": run.info.run_id,
        "name": run.info.run_name,
        "started": _when(run.info.start_time),
        "tags": {k: run.data.tags.get(k) for k in _COMPARED_TAGS if k in run.data.tags},
    }


def _json_number(value: float | None) -> float | str | None:
    """JSON has no inf or NaN: they are written as the strings ``"inf"``, ``"-inf"``, ``"nan"``."""
    if value is None or math.isfinite(value):
        return value
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def _json_row(r: DiffRow) -> dict[str, Any]:
    d = asdict(r)
    d["a"], d["b"] = _json_number(r.a), _json_number(r.b)
    return d


def cmd_compare(args: argparse.Namespace) -> int:
    def body(client: MlflowClient, uri: str, experiment: str) -> int:
        a = resolve_ref(client, experiment, args.a)
        b = resolve_ref(client, experiment, args.b)
        ma, mb = invocation_metrics(client, a), invocation_metrics(client, b)
        rows = diff_runs(
            a, b, rtol=args.rtol, atol=args.atol, timings=args.timings, timing_rtol=args.timing_rtol,
            metrics_a=ma, metrics_b=mb,
        )
        tag_rows = [
            (k, a.data.tags.get(k), b.data.tags.get(k))
            for k in _COMPARED_TAGS
            if a.data.tags.get(k) != b.data.tags.get(k)
        ]
        checks = _checks_in(ma) | _checks_in(mb)
        differing = {r.check for r in rows if r.check != "(invocation)"}
        news = classify(rows, a.data.params.get("seed"), b.data.params.get("seed"))
        if args.format == "json":
            print(json.dumps(
                {
                    "a": _describe(a),
                    "b": _describe(b),
                    "tags": [{"tag": k, "a": va, "b": vb} for k, va, vb in tag_rows],
                    "checks": len(checks),
                    "differing_checks": len(differing),
                    "rows": [_json_row(r) for r in rows],
                    "flips": [asdict(r) for r in news.flips],
                    "crossings": [asdict(r) for r in news.crossings],
                    "changes": [asdict(r) for r in news.changes],
                    "within_seed_noise": sorted(news.within_noise),
                },
                indent=2,
            ))
            return 1 if rows else 0
        for label, run in (("A", a), ("B", b)):
            print(f"{label}: {run.info.run_id}  {run.info.run_name}  ({_when(run.info.start_time)})")
        if tag_rows:
            print()
            print(table([[k, va or "-", vb or "-"] for k, va, vb in tag_rows], ["tag", "A", "B"]))
        print()
        if not rows:
            print(f"no differences in {len(checks)} checks" + ("" if args.timings else " (timings not compared)"))
            return 0
        _print_news(news, len(checks), timings=args.timings)
        print(f"{len(differing)} of {len(checks)} checks differ" + ("" if args.timings else
                                                                  " (timings not compared)"))
        return 1

    return _run_query(args, body)


def _print_news(news: News, n_checks: int, *, timings: bool) -> None:
    """Flips, then crossings, then changes beyond seed noise, then how many moved within it."""
    from bnverify.tolerances import COMPARE_FAR_FROM_TOLERANCE, COMPARE_NEAR_TOLERANCE, SEED_NOISE_FACTOR

    to_fail = [r for r in news.flips if r.a == 1.0]
    to_pass = [r for r in news.flips if r.a != 1.0]
    changed = {r.check for r in news.changes} - {r.check for r in news.flips} - {"(invocation)"}
    parts = [f"{len(to_fail)} newly failing", f"{len(to_pass)} newly passing", f"{len(news.crossings)} near the "
             "tolerance", f"{len(changed)} changed"
             + ("" if news.same_seed else " beyond seed noise"), f"{len(news.within_noise)} within seed noise"]
    print(f"{n_checks} checks: " + ", ".join(parts))

    def section(title: str, rows: list[DiffRow]) -> None:
        if not rows:
            return
        print()
        print(title)
        noisy = any(r.noise is not None for r in rows)
        out: list[list[str]] = []
        last = None
        for r in rows:
            row = [r.check if r.check != last else "", r.metric, _fmt(r.a), _fmt(r.b)]
            out.append(row + ([f"±{r.noise:.3g}" if r.noise is not None else ""] if noisy else []))
            last = r.check
        print(table(out, ["check", "metric", "A", "B"] + (["noise (95%)"] if noisy else [])))

    section(f"verdict flips, passed -> failed: {len(to_fail)}", to_fail)
    section(f"verdict flips, failed -> passed: {len(to_pass)}", to_pass)
    section(f"tolerance crossings: worst err/tol moved between below {COMPARE_FAR_FROM_TOLERANCE:g} and at least "
            f"{COMPARE_NEAR_TOLERANCE:g} of the tolerance", news.crossings)
    section("other changes" + (" (same seed: any change is news)" if news.same_seed else
                               f" beyond seed noise (a factor of {SEED_NOISE_FACTOR:g} or more)"), news.changes)
    if news.within_noise:
        print()
        print(f"{len(news.within_noise)} other checks moved within seed noise (less than a factor of "
              f"{SEED_NOISE_FACTOR:g}; the runs used different seeds)")


# --------------------------------------------------------------------------- history


def cmd_history(args: argparse.Namespace) -> int:
    def body(client: MlflowClient, uri: str, experiment: str) -> int:
        runs = tracking.invocation_runs(client, experiment, target=args.target, max_results=args.limit)
        if not runs:
            raise UsageError(f"no runs of target {args.target!r} in experiment {experiment!r} at {redact(uri)}")
        records = []
        for run in runs:
            m, t = {k: from_store(v) for k, v in run.data.metrics.items()}, run.data.tags
            if any(key not in m for key in args.metric):  # a suite run's metric (a series, a timing)
                m = invocation_metrics(client, run)
            rec: dict[str, Any] = {
                "started": _when(run.info.start_time),
                "run_id": run.info.run_id,
                "commit": (t.get(tracking.TAG_COMMIT) or "")[:10],
                "tier": t.get("tier", ""),
                "device": t.get("device", ""),
                "verdict": t.get("verdict", ""),
                "passed": m.get("summary.passed"),
                "failed": m.get("summary.failed"),
                "skipped": m.get("summary.skipped"),
                "worst_ratio": m.get("summary.worst_ratio"),
                "duration_s": m.get("summary.duration_s"),
            }
            for key in args.metric:
                rec[key] = m.get(key)
            records.append(rec)
        if args.format == "json":
            print(json.dumps([{k: _json_number(v) if isinstance(v, float) else v for k, v in rec.items()}
                              for rec in records], indent=2))
            return 0
        headers = list(records[0])
        rows = [[v if isinstance(v, str) else _fmt(v) for v in rec.values()] for rec in records]
        print(f"{args.target}: {len(records)} run(s) in experiment {experiment!r}, newest first")
        print(table(rows, headers))
        return 0

    return _run_query(args, body)


# --------------------------------------------------------------------------- standalone


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bnverify", description="bnverify tracking commands")
    add_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
