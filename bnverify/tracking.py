"""MLflow tracking: one parent run per ``bnverify check`` invocation, one child run per suite.

The controller process calls :func:`log_invocation` once, at the end, with the
whole :class:`~bnverify.results.RunSummary`.  It never raises: when the store
cannot be reached, or mlflow is not installed, the summary and its artifacts
are spooled to ``<home>/spool/<invocation id>/`` and :func:`sync` (``bnverify
sync``) replays them later, exactly once.

What lands in the store (see mlflow/README.md for the full table):

* experiment ``bnverify`` (or ``$BNVERIFY_EXPERIMENT``), created race-free;
* parent run ``<target>[@<commit>] · <tier> · <verdict>``, status FINISHED when
  the verdict is ``passed``, FAILED otherwise; tags ``target``, ``kind``,
  ``convention``, ``tier``, ``device``, ``verdict``, ``host``, ``git.commit``,
  ``version.{bnverify,torch,numpy,python,mlflow}``, ``bnverify.invocation_id``
  and every tag the caller put in ``summary.tags``; params from
  ``summary.params`` (plus ``seed``); metrics ``summary.*`` and, for every
  check, ``<suite>/<check>.<metric>``, so the UI's compare view of two parent
  runs is a check-by-check comparison;
* one child run per suite, ``<suite> · <target>``, holding ``suite.*`` and
  ``<check>.<metric>``;
* per check: ``pass`` (1 passed, 0 failed; absent when skipped), ``skipped``,
  ``worst_ratio`` (largest error over its tolerance), ``max_abs_err``,
  ``duration_s``, each entry of ``CheckResult.metrics``, and each entry of
  ``CheckResult.series`` logged with ``step`` = index (accuracy per epoch);
* artifacts on the parent: ``summary.json`` plus whatever the caller passes.

Names are sanitised with :func:`bnverify.results.metric_name` (pytest ids
contain ``[``, ``]`` and ``::``); suite names never contain ``/`` and metric
names never contain ``.``, so a parent key splits back into suite, check and
metric unambiguously (``bnverify compare`` relies on that).

mlflow is imported inside functions only, and its presence is checked through
package metadata, never ``find_spec``: the repository's ``mlflow/`` folder is
an importable namespace package when mlflow is missing.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import getpass
import hashlib
import importlib.metadata
import json
import logging
import math
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, Union
from urllib.parse import unquote

from bnverify.results import CheckResult, RunSummary, metric_name

if TYPE_CHECKING:  # pragma: no cover - typing only
    from mlflow.entities import Run

    from mlflow import MlflowClient

__all__ = [
    "DEFAULT_EXPERIMENT",
    "DEFAULT_HOME",
    "HTTP_DEFAULTS",
    "LogOutcome",
    "MlflowRecorder",
    "NullRecorder",
    "Recorder",
    "SyncReport",
    "default_tracking_uri",
    "home",
    "log_invocation",
    "make_recorder",
    "mlflow_available",
    "prepare",
    "resolve_experiment",
    "resolve_tracking_uri",
    "spool_dir",
    "spooled_invocations",
    "sync",
]

_log = logging.getLogger(__name__)

ENV_HOME = "BNVERIFY_HOME"
ENV_EXPERIMENT = "BNVERIFY_EXPERIMENT"
ENV_ARTIFACT_ROOT = "BNVERIFY_ARTIFACT_ROOT"
ENV_LOCK_TIMEOUT = "BNVERIFY_TRACKING_LOCK_TIMEOUT"

#: ``$BNVERIFY_HOME`` or ``./.bnverify``, as it was when this module was imported.
#: Everything in this module reads the environment again at call time (:func:`home`).
DEFAULT_HOME: Path = Path(os.environ.get(ENV_HOME) or ".bnverify")
DEFAULT_EXPERIMENT = "bnverify"

#: Short HTTP settings applied while bnverify talks to a tracking server, unless the
#: user set the variable.  mlflow's own defaults (120 s timeout, 7 retries with a
#: backoff factor of 2) can block a finished check for minutes.  With these, a dead
#: server is given up on in about 2-3 s (three refused connections and one 2 s
#: backoff) and a hung one in about 17 s (three 5 s read timeouts plus the backoff).
HTTP_DEFAULTS: dict[str, str] = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",  # seconds, per attempt (an int for mlflow)
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",  # urllib3: 0 s, then 2 s (an int for mlflow)
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
}

#: How long to wait for another bnverify process that is writing to the same SQLite
#: store (writes are serialised: SQLite has one writer) before spooling instead.
DEFAULT_LOCK_TIMEOUT_S = 30.0

# Tag keys.  Plain keys are what users filter on in the UI (``tags.target = "x"``).
TAG_INVOCATION = "bnverify.invocation_id"
TAG_ROLE = "bnverify.role"  # "invocation" (parent) or "suite" (child)
TAG_COMPLETE = "bnverify.complete"  # "true", set last: a parent without it is partial
TAG_SUITE = "suite"
TAG_COMMIT = "git.commit"
ROLE_INVOCATION = "invocation"
ROLE_SUITE = "suite"
_COMMIT_KEYS = (
    "git.commit",
    "target_git_commit",
    "git_commit",
    "git_sha",
    "git.sha",
    "commit",
    "mlflow.source.git.commit",
)

# mlflow's request limits (mlflow.utils.validation): per log_batch call, and value sizes.
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_ENTITIES_PER_BATCH = 1000
MAX_BATCH_BYTES = 900_000  # the REST limit is 1 MB; keep a margin for JSON framing
MAX_PARAM_VAL_LENGTH = 6000
MAX_TAG_VAL_LENGTH = 8000
MAX_KEY_LENGTH = 250

ArtifactValue = Union[str, bytes, "os.PathLike[str]"]


# --------------------------------------------------------------------------- configuration


def home() -> Path:
    """The bnverify home folder (absolute): ``$BNVERIFY_HOME`` or ``./.bnverify``, read now."""
    return Path(os.environ.get(ENV_HOME) or ".bnverify").expanduser().absolute()


def spool_dir() -> Path:
    """Where results wait when the store is unreachable: ``<home>/spool``."""
    return home() / "spool"


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<home>/mlflow.db`` (absolute path)."""
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    return "sqlite:///" + (home() / "mlflow.db").as_posix()


def resolve_tracking_uri(cli_uri: str | None) -> str:
    """Precedence: ``--tracking-uri`` > ``$MLFLOW_TRACKING_URI`` > the local SQLite default.

    A bare path ending in ``.db`` or ``.sqlite`` is taken as a SQLite file.
    """
    uri = (cli_uri or "").strip()
    if not uri:
        return default_tracking_uri()
    if "://" not in uri and uri.endswith((".db", ".sqlite", ".sqlite3")):
        return "sqlite:///" + Path(uri).expanduser().absolute().as_posix()
    return uri


def resolve_experiment(experiment: str | None) -> str:
    """The experiment name: the argument, else ``$BNVERIFY_EXPERIMENT``, else ``bnverify``."""
    return (experiment or os.environ.get(ENV_EXPERIMENT) or DEFAULT_EXPERIMENT).strip()


def mlflow_available() -> bool:
    """Whether an mlflow distribution is installed (package metadata, not ``find_spec``)."""
    for dist in ("mlflow", "mlflow-skinny"):
        try:
            importlib.metadata.version(dist)
            return True
        except importlib.metadata.PackageNotFoundError:
            continue
    return False


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _mlflow_version() -> str:
    found = _version("mlflow")
    return found if found != "not installed" else _version("mlflow-skinny")


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for in-memory and other schemes)."""
    if not uri.startswith("sqlite:"):
        return None
    rest = uri[len("sqlite:") :]
    if not rest.startswith("///"):
        return None
    path = unquote(rest[3:].split("?", 1)[0])
    if path in ("", ":memory:"):
        return None
    return Path(path).absolute()


def _is_database_uri(uri: str) -> bool:
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
    return scheme in ("sqlite", "postgresql", "mysql", "mssql")


def _is_http_uri(uri: str) -> bool:
    return uri.lower().startswith(("http://", "https://"))


def _redact(uri: str) -> str:
    """The URI without a password, for messages and spool metadata."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", uri)


# --------------------------------------------------------------------------- names


def _clean_key(*parts: str) -> str:
    """A key MLflow accepts for metrics, params and tags (no empty, ``.`` or ``..`` segments)."""
    raw = metric_name(*(str(p) for p in parts))
    segs = [s for s in raw.split("/") if s not in ("", ".", "..")]
    key = "/".join(s.strip() or "_" for s in segs)
    return (key or "_")[:MAX_KEY_LENGTH]


def _suite_key(suite: str) -> str:
    return _clean_key(suite or "unknown").replace("/", "_")


def _metric_suffix(name: str) -> str:
    """A metric name within a check: no ``/`` and no ``.`` (so keys split back unambiguously)."""
    return _clean_key(name).replace("/", "_").replace(".", "_")


def _check_keys(results: list[CheckResult]) -> list[str]:
    """One unique key per result of a suite, from ``check`` (or the node id's last part)."""
    seen: dict[str, int] = {}
    out: list[str] = []
    for r in results:
        base = _clean_key(r.check or r.nodeid.rsplit("::", 1)[-1] or "check")[:180]
        n = seen.get(base, 0) + 1
        seen[base] = n
        out.append(base if n == 1 else f"{base}_{n}")
    return out


def _run_name(*parts: str) -> str:
    return " · ".join(p for p in parts if p)[:240]


# --------------------------------------------------------------------------- the run plan


@dataclass
class _RunPlan:
    """Everything one MLflow run receives, built without touching mlflow."""

    name: str
    status: str
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: list[tuple[str, float, int]] = field(default_factory=list)  # key, value, step
    duration_s: float = 0.0


@dataclass
class _InvocationPlan:
    parent: _RunPlan
    children: dict[str, _RunPlan]


def _as_float(value: Any) -> float | None:
    if value is None or isinstance(value, str):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _check_metrics(r: CheckResult) -> list[tuple[str, float, int]]:
    """(metric suffix, value, step) for one check."""
    out: list[tuple[str, float, int]] = []
    if r.passed:
        out.append(("pass", 1.0, 0))
    elif r.failed:
        out.append(("pass", 0.0, 0))
    else:  # skipped: no pass/fail, so the UI and compare see "absent", never a silent 0
        out.append(("skipped", 1.0, 0))
    for name, value in (
        ("worst_ratio", r.worst_ratio),
        ("max_abs_err", r.max_abs_err),
        ("duration_s", r.duration_s),
    ):
        v = _as_float(value)
        if v is not None:
            out.append((name, v, 0))
    for name, value in sorted(r.metrics.items()):
        v = _as_float(value)
        if v is not None:
            out.append((_metric_suffix(name), v, 0))
    for name, values in sorted(r.series.items()):
        suffix = _metric_suffix(name)
        for step, value in enumerate(values):
            v = _as_float(value)
            if v is not None:
                out.append((suffix, v, step))
    return out


def _counts_metrics(prefix: str, results: list[CheckResult], duration_s: float) -> list[tuple[str, float, int]]:
    counts: dict[str, int] = {}
    for r in results:
        counts[r.outcome] = counts.get(r.outcome, 0) + 1
    failed = sum(1 for r in results if r.failed)
    ratios = [
        v for v in (_as_float(r.worst_ratio) for r in results) if v is not None and not math.isnan(v)
    ]
    out = [
        (f"{prefix}.total", float(len(results)), 0),
        (f"{prefix}.passed", float(counts.get("passed", 0)), 0),
        (f"{prefix}.failed", float(failed), 0),
        (f"{prefix}.skipped", float(counts.get("skipped", 0)), 0),
        (f"{prefix}.xfailed", float(counts.get("xfailed", 0)), 0),
        (f"{prefix}.pass", 0.0 if failed else 1.0, 0),
        (f"{prefix}.duration_s", float(duration_s), 0),
    ]
    if ratios:
        out.append((f"{prefix}.worst_ratio", max(ratios), 0))
    return out


def _git_commit(tags: Mapping[str, str]) -> str | None:
    for key in _COMMIT_KEYS:
        value = tags.get(key)
        if value and str(value).strip() and str(value).strip().lower() != "unknown":
            return str(value).strip()
    return None


def _auto_tags() -> dict[str, str]:
    tags = {
        "host": socket.gethostname(),
        "platform": platform.platform(terse=True),
        "version.python": platform.python_version(),
        "version.bnverify": _version("bnverify"),
        "version.torch": _version("torch"),
        "version.numpy": _version("numpy"),
        "version.mlflow": _mlflow_version(),
        "mlflow.source.name": "bnverify check",
        "mlflow.source.type": "LOCAL",
    }
    with contextlib.suppress(Exception):
        tags["mlflow.user"] = getpass.getuser()
    return tags


def _note(summary: RunSummary, invocation_id: str) -> str:
    c = summary.counts
    lines = [
        (
            f"**bnverify check** `{summary.target}`: **{summary.verdict}** "
            f"(kind {summary.kind}, convention {summary.convention}, tier {summary.tier}, "
            f"device {summary.device}, seed {summary.seed})"
        ),
        "",
        " · ".join(f"{k} {v}" for k, v in c.items() if v) or "no checks ran",
        "",
        f"invocation `{invocation_id}`",
    ]
    bad = [r for r in summary.results if r.failed]
    if bad:
        lines += ["", "| check | outcome | worst ratio | message |", "|---|---|---|---|"]
        for r in bad[:50]:
            msg = (r.message or "").strip().splitlines()
            first = (msg[0] if msg else "").replace("|", "\\|")[:200]
            ratio = "" if r.worst_ratio is None else f"{r.worst_ratio:.3g}"
            lines.append(f"| `{r.suite}/{r.check or r.nodeid}` | {r.outcome} | {ratio} | {first} |")
        if len(bad) > 50:
            lines.append(f"| ... {len(bad) - 50} more | | | |")
    return "\n".join(lines)[: MAX_TAG_VAL_LENGTH - 10]


def _plan(summary: RunSummary, invocation_id: str) -> _InvocationPlan:
    verdict = summary.verdict
    commit = _git_commit(summary.tags)
    target_label = f"{summary.target}@{commit[:8]}" if commit else summary.target

    tags: dict[str, str] = dict(_auto_tags())
    tags.update({str(k): str(v) for k, v in summary.tags.items()})
    tags.update({
        "target": summary.target,
        "kind": summary.kind,
        "convention": summary.convention,
        "tier": summary.tier,
        "device": summary.device,
        "verdict": verdict,
        TAG_INVOCATION: invocation_id,
        TAG_ROLE: ROLE_INVOCATION,
        "mlflow.note.content": _note(summary, invocation_id),
    })
    if commit:
        tags[TAG_COMMIT] = commit
        tags["mlflow.source.git.commit"] = commit

    params = {str(k): v if isinstance(v, str) else json.dumps(v, default=str) for k, v in summary.params.items()}
    if summary.seed is not None and "seed" not in params:
        params["seed"] = str(summary.seed)

    by_suite: dict[str, list[CheckResult]] = {}
    for r in summary.results:
        by_suite.setdefault(_suite_key(r.suite), []).append(r)

    parent_metrics = _counts_metrics("summary", summary.results, summary.duration_s)
    children: dict[str, _RunPlan] = {}
    for suite, results in sorted(by_suite.items()):
        suite_duration = sum(_as_float(r.duration_s) or 0.0 for r in results)
        child_metrics = _counts_metrics("suite", results, suite_duration)
        for key, r in zip(_check_keys(results), results):
            for suffix, value, step in _check_metrics(r):
                child_metrics.append((f"{key}.{suffix}", value, step))
                parent_metrics.append((f"{suite}/{key}.{suffix}", value, step))
        failed = any(r.failed for r in results)
        children[suite] = _RunPlan(
            name=_run_name(suite, target_label),
            status="FAILED" if failed else "FINISHED",
            tags={
                "target": summary.target,
                "kind": summary.kind,
                "convention": summary.convention,
                "tier": summary.tier,
                "device": summary.device,
                TAG_SUITE: suite,
                "verdict": "failed" if failed else "passed",
                **({TAG_COMMIT: commit} if commit else {}),
            },
            metrics=child_metrics,
            duration_s=suite_duration,
        )
    parent = _RunPlan(
        name=_run_name(target_label, summary.tier, verdict),
        status="FINISHED" if verdict == "passed" else "FAILED",
        tags=tags,
        params=params,
        metrics=parent_metrics,
        duration_s=float(summary.duration_s or 0.0),
    )
    return _InvocationPlan(parent=parent, children=children)


def _batches(
    metrics: list[tuple[str, float, int]],
    params: Mapping[str, str],
    tags: Mapping[str, str],
) -> Iterator[tuple[list[tuple[str, float, int]], list[tuple[str, str]], list[tuple[str, str]]]]:
    """Split into log_batch calls under mlflow's limits.

    Per call: at most 1000 metrics, 100 params, 100 tags, 1000 entities in all, and
    well under the 1 MB request size.
    """
    p_items = [(_clean_key(k), str(v)[:MAX_PARAM_VAL_LENGTH]) for k, v in params.items()]
    t_items = [(_clean_key(k), str(v)[:MAX_TAG_VAL_LENGTH]) for k, v in tags.items()]
    m_items = list(metrics)
    while p_items or t_items or m_items:
        size = 0
        ps: list[tuple[str, str]] = []
        ts: list[tuple[str, str]] = []
        ms: list[tuple[str, float, int]] = []
        while p_items and len(ps) < MAX_PARAMS_TAGS_PER_BATCH and size + len(p_items[0][0]) + len(p_items[0][1]) + 40 < MAX_BATCH_BYTES:
            k, v = p_items.pop(0)
            size += len(k) + len(v) + 40
            ps.append((k, v))
        while t_items and len(ts) < MAX_PARAMS_TAGS_PER_BATCH and size + len(t_items[0][0]) + len(t_items[0][1]) + 40 < MAX_BATCH_BYTES:
            k, v = t_items.pop(0)
            size += len(k) + len(v) + 40
            ts.append((k, v))
        room = min(MAX_METRICS_PER_BATCH, MAX_ENTITIES_PER_BATCH - len(ps) - len(ts))
        while m_items and len(ms) < room and size + len(m_items[0][0]) + 100 < MAX_BATCH_BYTES:
            item = m_items.pop(0)
            size += len(item[0]) + 100
            ms.append(item)
        yield ms, ps, ts


# --------------------------------------------------------------------------- mlflow glue


@contextlib.contextmanager
def _tracking_context() -> Iterator[None]:
    """The conditions bnverify talks to MLflow under.

    * short HTTP timeouts and retries (:data:`HTTP_DEFAULTS`) unless the user set them;
    * mlflow's warnings recorded, not raised: under ``filterwarnings = error`` a
      deprecation notice (SQLAlchemy 2.1 warns while mlflow's SQL store is imported)
      would otherwise fail the import half-way;
    * mlflow's and alembic's chatter ("Creating initial MLflow database tables",
      "View run ... at") kept off the check's output.
    """
    set_here: dict[str, str] = {}
    # no "🏃 View run ... at" line on stdout per run (and no extra GET per finished run)
    for key, value in {**HTTP_DEFAULTS, "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}.items():
        if key not in os.environ:
            os.environ[key] = value
            set_here[key] = value
    levels: dict[str, int] = {}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                import mlflow  # noqa: F401  (it configures its loggers on import: quiet them after)

                for name in ("mlflow", "alembic"):
                    lg = logging.getLogger(name)
                    levels[name] = lg.level
                    if lg.getEffectiveLevel() < logging.WARNING:
                        lg.setLevel(logging.WARNING)
                yield
            finally:
                for w in caught:
                    _log.debug("mlflow warning: %s: %s", w.category.__name__, w.message)
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        for key, value in set_here.items():
            if os.environ.get(key) == value:
                del os.environ[key]


def _lock_timeout() -> float:
    try:
        return float(os.environ.get(ENV_LOCK_TIMEOUT, DEFAULT_LOCK_TIMEOUT_S))
    except ValueError:
        return DEFAULT_LOCK_TIMEOUT_S


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Serialise bnverify processes on one machine that open the same database store.

    SQLite: held for the whole write (one writer; no "database is locked"), which also
    makes the first-time schema migration happen once.  Other databases: callers release
    it after the experiment exists (it guards only the migration and creation).
    """
    from filelock import FileLock, Timeout

    db = _sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        lock_path = db.with_name(db.name + ".lock")
    elif _is_database_uri(uri):
        digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
        lock_dir = home() / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        lock_path = lock_dir / f"store-{digest}.lock"
    else:
        yield
        return
    lock = FileLock(str(lock_path))
    timeout = _lock_timeout()
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        raise RuntimeError(
            f"the tracking store is locked by another bnverify process for over {timeout:.0f} s "
            f"({lock_path}; set {ENV_LOCK_TIMEOUT} to wait longer)"
        ) from None
    try:
        yield
    finally:
        lock.release()


def _artifact_location(uri: str, experiment: str) -> str | None:
    """Where a new experiment keeps artifacts when bnverify creates it in a database store.

    Next to the SQLite file (``<db folder>/artifacts/<experiment>``), under
    ``$BNVERIFY_ARTIFACT_ROOT`` if set, and never mlflow's fallback of ``./mlruns`` in
    whatever folder the check happened to run.  A tracking server decides for itself.
    """
    if _is_http_uri(uri) or not _is_database_uri(uri):
        return None
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", experiment) or "bnverify"
    root = os.environ.get(ENV_ARTIFACT_ROOT, "").strip()
    if root:
        if "://" in root:
            return root.rstrip("/") + "/" + name
        return (Path(root).expanduser().absolute() / name).as_uri()
    db = _sqlite_path(uri)
    base = db.parent if db is not None else home()
    return (base / "artifacts" / name).as_uri()


def _get_or_create_experiment(client: MlflowClient, name: str, uri: str) -> str:
    """Race-safe get-or-create (``set_experiment`` is not: mlflow#12259)."""
    from mlflow.exceptions import MlflowException

    last: Exception | None = None
    for attempt in range(5):
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                client.restore_experiment(exp.experiment_id)
            return str(exp.experiment_id)
        try:
            return str(client.create_experiment(name, artifact_location=_artifact_location(uri, name)))
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS" and "already exists" not in str(e).lower():
                raise
            last = e
            time.sleep(0.05 * (attempt + 1))
    raise RuntimeError(f"could not get or create experiment {name!r}: {last}")


def _log_plan_batches(client: MlflowClient, run_id: str, plan: _RunPlan, timestamp_ms: int) -> None:
    from mlflow.entities import Metric, Param, RunTag

    for ms, ps, ts in _batches(plan.metrics, plan.params, plan.tags):
        client.log_batch(
            run_id,
            metrics=[Metric(k, v, timestamp_ms, step) for k, v, step in ms],
            params=[Param(k, v) for k, v in ps],
            tags=[RunTag(k, v) for k, v in ts],
        )


def _upload_artifacts(client: MlflowClient, run_id: str, folder: Path) -> None:
    if folder.is_dir() and any(folder.iterdir()):
        client.log_artifacts(run_id, str(folder))


def _ensure_sqlite(uri: str) -> None:
    """Create a new SQLite store in WAL mode (call under the store lock).

    WAL makes each commit one fsync of the log instead of a rollback journal's several
    (a 40-check invocation writes in about 0.3 s instead of 0.7 s, the first-time
    migration takes about 1.5 s instead of 5.5 s) and lets ``mlflow ui`` read while a
    check writes.  Only files bnverify creates, and its own default store, are switched.
    """
    import sqlite3

    db = _sqlite_path(uri)
    if db is None:
        return
    fresh = not db.exists() or db.stat().st_size == 0
    if not fresh and db != home() / "mlflow.db":
        return
    with contextlib.suppress(sqlite3.Error, OSError):
        con = sqlite3.connect(str(db), timeout=1.0)
        try:
            if con.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                con.execute("PRAGMA journal_mode=WAL")
        finally:
            con.close()


def _probe_database(uri: str) -> None:
    """Fail in seconds when a server database (PostgreSQL, MySQL) is unreachable.

    mlflow retries engine creation 10 times with exponential sleeps (about 100 s in all,
    ``mlflow.store.db.utils.create_sqlalchemy_engine_with_retry``); one connection attempt
    with a 5 s connect timeout first turns an outage into a prompt spool.
    """
    if _sqlite_path(uri) is not None or not _is_database_uri(uri) or uri.startswith("sqlite"):
        return
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    scheme = uri.split(":", 1)[0].lower()
    connect_args: dict[str, Any] = {}
    if scheme.startswith(("postgresql", "mysql")):
        connect_args["connect_timeout"] = int(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "5") or 5)
    engine = sqlalchemy.create_engine(uri, connect_args=connect_args, poolclass=NullPool)
    try:
        with engine.connect():
            pass
    finally:
        engine.dispose()


@contextlib.contextmanager
def _open_store(uri: str, experiment: str | None, *, hold: bool | None = None) -> Iterator[tuple[MlflowClient, str | None]]:
    """An ``MlflowClient`` on ``uri`` and the experiment id (get-or-create; None if not asked).

    The client is built under the store lock, so the first-time schema migration of a
    database store runs once even when N processes open a fresh store together.  The lock
    is held for the whole block for SQLite (``hold`` None), else released once the
    experiment exists.
    """
    from mlflow import MlflowClient

    keep = _sqlite_path(uri) is not None if hold is None else hold
    if _is_database_uri(uri):  # a second of imports: pay it before queueing for the lock
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    with contextlib.ExitStack() as locked:
        _probe_database(uri)
        locked.enter_context(_store_lock(uri))
        _ensure_sqlite(uri)
        client = MlflowClient(tracking_uri=uri)
        exp_id = _get_or_create_experiment(client, experiment, uri) if experiment else None
        if not keep:
            locked.close()
        yield client, exp_id


def _write_invocation(
    uri: str,
    experiment: str,
    summary: RunSummary,
    invocation_id: str,
    end_ms: int,
    artifacts_dir: Path | None,
) -> str:
    """Log one invocation to the store; returns the parent run id.  Raises on failure."""
    plan = _plan(summary, invocation_id)
    with _open_store(uri, experiment) as (client, exp_id):
        assert exp_id is not None
        start_ms = end_ms - int(max(plan.parent.duration_s, 0.0) * 1000)
        parent = client.create_run(
            exp_id,
            start_time=start_ms,
            tags={TAG_INVOCATION: invocation_id, TAG_ROLE: ROLE_INVOCATION},
            run_name=plan.parent.name,
        )
        parent_id = str(parent.info.run_id)
        _log_plan_batches(client, parent_id, plan.parent, end_ms)
        for suite, child in plan.children.items():
            run = client.create_run(
                exp_id,
                start_time=start_ms,
                tags={
                    "mlflow.parentRunId": parent_id,
                    TAG_INVOCATION: invocation_id,
                    TAG_ROLE: ROLE_SUITE,
                    TAG_SUITE: suite,
                },
                run_name=child.name,
            )
            _log_plan_batches(client, run.info.run_id, child, end_ms)
            child_end = min(end_ms, start_ms + int(child.duration_s * 1000))
            client.set_terminated(run.info.run_id, status=child.status, end_time=max(child_end, start_ms))
        if artifacts_dir is not None:
            _upload_artifacts(client, parent_id, artifacts_dir)
        client.set_tag(parent_id, TAG_COMPLETE, "true")
        client.set_terminated(parent_id, status=plan.parent.status, end_time=end_ms)
        return parent_id


# --------------------------------------------------------------------------- staging and spool


def _safe_relpath(name: str) -> PurePosixPath | None:
    parts = [p for p in PurePosixPath(str(name).replace("\\", "/")).parts if p not in ("", ".", "..", "/")]
    return PurePosixPath(*parts) if parts else None


def _stage(
    folder: Path,
    summary: RunSummary,
    artifacts: Mapping[str, ArtifactValue],
    meta: dict[str, Any],
) -> list[str]:
    """Write ``summary.json``, ``meta.json`` and ``artifacts/`` into ``folder``; returns notes."""
    notes: list[str] = []
    art = folder / "artifacts"
    art.mkdir(parents=True, exist_ok=True)
    text = summary.to_json()
    (folder / "summary.json").write_text(text, encoding="utf-8")
    (art / "summary.json").write_text(text, encoding="utf-8")
    for name, value in artifacts.items():
        rel = _safe_relpath(name)
        if rel is None:
            notes.append(f"artifact {name!r} skipped: not a relative file name")
            continue
        dest = art.joinpath(*rel.parts)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            if isinstance(value, bytes):
                dest.write_bytes(value)
            elif isinstance(value, str):
                dest.write_text(value, encoding="utf-8")
            else:
                src = Path(os.fspath(value))
                if src.is_dir():
                    shutil.copytree(src, dest, dirs_exist_ok=True)
                elif src.is_file():
                    shutil.copyfile(src, dest)
                else:
                    notes.append(f"artifact {name!r} skipped: {src} does not exist")
        except (OSError, TypeError) as e:
            notes.append(f"artifact {name!r} skipped: {e}")
    (folder / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")
    return notes


def _spool(staging: Path, invocation_id: str) -> Path:
    """Move a staged invocation into ``<home>/spool/<invocation id>/`` atomically."""
    root = spool_dir()
    root.mkdir(parents=True, exist_ok=True)
    final = root / invocation_id
    tmp = root / f".{invocation_id}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(staging, tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def _describe_error(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:400]}"


class LogOutcome(NamedTuple):
    """What :func:`log_invocation` did: a run id, or the spool folder, and one line saying so."""

    run_id: str | None
    spooled: Path | None
    message: str


def _invocation_id(summary: RunSummary) -> str:
    given = str(summary.tags.get(TAG_INVOCATION, "")).strip()
    return given if re.fullmatch(r"[A-Za-z0-9_-]{8,64}", given) else uuid.uuid4().hex


def log_invocation(
    summary: RunSummary,
    *,
    tracking_uri: str | None,
    artifacts: Mapping[str, ArtifactValue] | None = None,
    experiment: str | None = None,
) -> LogOutcome:
    """Log one ``bnverify check`` invocation; never raises, never changes a verdict.

    Args:
        summary: every result of the invocation (the controller's, after all workers).
        tracking_uri: ``--tracking-uri``; None means ``$MLFLOW_TRACKING_URI`` or the
            local SQLite default (:func:`resolve_tracking_uri`).
        artifacts: extra files for the parent run, by relative name (``report.txt``,
            ``junit.xml``, ``plots/loss.png``).  A ``str`` value is the file's *text*,
            ``bytes`` its content, and a :class:`pathlib.Path` a file or folder to copy.
        experiment: the experiment name; default ``$BNVERIFY_EXPERIMENT`` or ``bnverify``.

    Returns:
        ``LogOutcome(run_id, None, message)`` when logged;
        ``LogOutcome(None, spool_folder, warning)`` when the store failed and the results
        were spooled for ``bnverify sync``.
    """
    end_ms = int(time.time() * 1000)
    try:
        uri = resolve_tracking_uri(tracking_uri)
        exp_name = resolve_experiment(experiment)
        invocation_id = _invocation_id(summary)
        summary = dataclasses.replace(summary, tags={**summary.tags, TAG_INVOCATION: invocation_id})
    except Exception as e:  # noqa: BLE001 - a summary this broken cannot be spooled usefully
        return LogOutcome(None, None, f"tracking: not logged ({_describe_error(e)})")

    meta: dict[str, Any] = {
        "invocation_id": invocation_id,
        "experiment": exp_name,
        "tracking_uri": _redact(uri),
        "end_ms": end_ms,
        "spooled_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "bnverify_version": _version("bnverify"),
    }
    try:
        staging = Path(tempfile.mkdtemp(prefix="bnverify-track-"))
    except OSError as e:
        return LogOutcome(None, None, f"tracking WARNING: not logged, no temporary folder ({e}); the verdict stands")
    try:
        try:
            notes = _stage(staging, summary, artifacts or {}, meta)
        except Exception as e:  # noqa: BLE001 - a missing artifact must not lose the results
            notes = [f"staging failed: {_describe_error(e)}"]
        note = f" ({'; '.join(notes)})" if notes else ""
        error: str
        if not mlflow_available():
            error = "mlflow is not installed (pip install mlflow)"
        else:
            try:
                run_id = _deliver(uri, exp_name, summary, invocation_id, end_ms, staging)
                return LogOutcome(run_id, None, f"tracking: logged run {run_id} to {_redact(uri)}{note}")
            except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - never raise: spool
                error = _describe_error(e)
        meta["error"] = error
        try:
            (staging / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")
            where = _spool(staging, invocation_id)
        except Exception as e:  # noqa: BLE001 - not even the spool: say so, keep the verdict
            return LogOutcome(
                None,
                None,
                f"tracking WARNING: could not log to {_redact(uri)} ({error}) "
                f"and could not spool ({_describe_error(e)}); the verdict stands",
            )
        return LogOutcome(
            None,
            where,
            f"tracking WARNING: could not log to {_redact(uri)} ({error}); results "
            f"spooled to {where}; replay them with `bnverify sync`{note}",
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --------------------------------------------------------------------------- the agent (prepare)


ENV_TIMEOUT = "BNVERIFY_TRACKING_TIMEOUT"
DEFAULT_TIMEOUT_S = 60.0


class _AgentUnavailable(Exception):
    """The agent cannot take the request (it never got it): log in-process instead."""


class _StoreError(Exception):
    """The agent tried and the store failed: spool."""


class _Agent:
    """A helper process that imports mlflow and opens the store while the checks run.

    Importing mlflow and its SQL store costs about 2 s of CPU, and a fresh SQLite store
    needs its schema migrated; done in the controller at the end, that is 5-10 % of a
    quick tier.  The agent does it in parallel, in a thread at low priority (nice 10),
    then waits for one request: the staged invocation (``summary.json`` and ``artifacts/``), which
    it writes under the same rules as the in-process path.  It inherits the environment,
    exits when its stdin closes, and is killed past ``$BNVERIFY_TRACKING_TIMEOUT``.
    """

    def __init__(self, uri: str, experiment: str) -> None:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.uri = uri
        self.experiment = experiment
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from bnverify.tracking import _agent_main; _agent_main()", uri, experiment],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            text=True,
            encoding="utf-8",
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float = 0.0) -> None:
        if grace and self.alive():
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace)
        if self.alive():
            self.proc.kill()
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=5)
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(Exception):
                if stream is not None:
                    stream.close()

    def log(self, staging: Path, invocation_id: str, end_ms: int, timeout: float) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        request = {"staging": str(staging), "invocation_id": invocation_id, "end_ms": end_ms}
        if not self.alive():
            self.stop()
            raise _AgentUnavailable("the tracking agent exited early")
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            self.proc.stdin.close()
        except (OSError, ValueError) as e:
            self.stop()
            raise _AgentUnavailable(str(e)) from None
        answer: list[str] = []
        stdout = self.proc.stdout
        reader = threading.Thread(target=lambda: answer.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if reader.is_alive():
            self.stop()
            raise TimeoutError(f"the tracking store did not finish within {timeout:.0f} s (${ENV_TIMEOUT})")
        self.stop(grace=10.0)  # it exits by itself once it has answered
        line = answer[0] if answer else ""
        if not line.strip():
            raise _StoreError(f"the tracking agent exited without an answer (exit code {self.proc.returncode})")
        reply = json.loads(line)
        if "run_id" not in reply:
            raise _StoreError(str(reply.get("error", "no answer")))
        return str(reply["run_id"])


_AGENTS: dict[tuple[str, str], _Agent] = {}


def _stop_agents() -> None:
    while _AGENTS:
        _AGENTS.popitem()[1].stop()


atexit.register(_stop_agents)


def prepare(tracking_uri: str | None, experiment: str | None = None) -> bool:
    """Start importing mlflow and opening the store in a helper process; never raises.

    Call it once, early, in the process that will call :func:`log_invocation` (the
    pytest controller, never an xdist worker), with the same URI and experiment.
    ``log_invocation`` then hands the write to that process, and the check's wall time
    pays only for the write itself.  Without ``prepare`` everything still works, in the
    calling process.  Returns whether a helper was started.
    """
    try:
        if not mlflow_available():
            return False
        uri = resolve_tracking_uri(tracking_uri)
        key = (uri, resolve_experiment(experiment))
        if key in _AGENTS and _AGENTS[key].alive():
            return True
        _AGENTS[key] = _Agent(*key)
        return True
    except Exception as e:  # noqa: BLE001 - tracking never breaks a check
        _log.debug("bnverify tracking: prepare failed: %s", e)
        return False


def _timeout() -> float:
    try:
        return float(os.environ.get(ENV_TIMEOUT, DEFAULT_TIMEOUT_S))
    except ValueError:
        return DEFAULT_TIMEOUT_S


def _deliver(uri: str, experiment: str, summary: RunSummary, invocation_id: str, end_ms: int, staging: Path) -> str:
    """Write a staged invocation: through the prepared agent if there is one, else here."""
    agent = _AGENTS.pop((uri, experiment), None)
    if agent is not None:
        try:
            return agent.log(staging, invocation_id, end_ms, _timeout())
        except _AgentUnavailable as e:
            _log.debug("bnverify tracking: agent unavailable (%s); logging in-process", e)
    with _tracking_context():
        return _write_invocation(uri, experiment, summary, invocation_id, end_ms, staging / "artifacts")


def _agent_main() -> None:
    """Entry point of the helper process started by :func:`prepare`."""
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # anything else printed goes to stderr, not into the answer
    uri, experiment = sys.argv[1], sys.argv[2]

    def warm_up() -> None:
        # niceness is per thread on Linux: only the warm-up yields to the checks, the
        # write itself (once the checks are done and the controller waits) runs at full speed
        with contextlib.suppress(Exception):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        try:
            with _tracking_context(), _open_store(uri, experiment, hold=False):
                pass
        except Exception as e:  # noqa: BLE001 - the real write meets the same problem and reports it
            _log.debug("bnverify tracking agent: warm-up failed: %s", e)

    warming = threading.Thread(target=warm_up, name="bnverify-warm-up", daemon=True)
    warming.start()
    line = sys.stdin.readline()
    warming.join()
    if not line.strip():
        os._exit(0)
    try:
        request = json.loads(line)
        staging = Path(request["staging"])
        summary = RunSummary.from_json((staging / "summary.json").read_text(encoding="utf-8"))
        with _tracking_context():
            run_id = _write_invocation(
                uri, experiment, summary, str(request["invocation_id"]), int(request["end_ms"]), staging / "artifacts"
            )
        reply: dict[str, str] = {"run_id": run_id}
    except BaseException as e:  # noqa: BLE001 - the answer carries it
        reply = {"error": _describe_error(e)}
    out.write(json.dumps(reply) + "\n")
    out.flush()
    # everything is committed; skip the interpreter's teardown (mlflow's exit hooks take
    # a few hundred ms, and the controller waits for this process to end)
    os._exit(0)


# --------------------------------------------------------------------------- sync


@dataclass
class SyncReport:
    """What :func:`sync` did with each spooled invocation."""

    tracking_uri: str
    replayed: list[tuple[str, str]] = field(default_factory=list)  # (invocation id, run id)
    skipped: list[str] = field(default_factory=list)  # already complete in the store
    failed: list[tuple[str, str]] = field(default_factory=list)  # (invocation id, error)
    pending: list[str] = field(default_factory=list)  # not tried after a failure

    @property
    def ok(self) -> bool:
        return not self.failed and not self.pending

    def lines(self) -> list[str]:
        uri = _redact(self.tracking_uri)
        if not (self.replayed or self.skipped or self.failed or self.pending):
            return [f"nothing to sync: the spool ({spool_dir()}) is empty"]
        out = [f"replayed {len(self.replayed)} spooled invocation(s) into {uri}"]
        out += [f"  {inv} -> run {run}" for inv, run in self.replayed]
        if self.skipped:
            out.append(f"skipped {len(self.skipped)} already in the store (spool entry removed)")
            out += [f"  {inv}" for inv in self.skipped]
        if self.failed:
            out.append(f"failed {len(self.failed)}, still spooled:")
            out += [f"  {inv}: {err}" for inv, err in self.failed]
        if self.pending:
            out.append(f"not tried after the failure, still spooled: {len(self.pending)}")
        return out


def spooled_invocations() -> list[Path]:
    """Spooled invocation folders, oldest first."""
    root = spool_dir()
    if not root.is_dir():
        return []
    entries = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / "summary.json").is_file()]

    def when(p: Path) -> float:
        try:
            return float(json.loads((p / "meta.json").read_text(encoding="utf-8"))["end_ms"])
        except (OSError, ValueError, KeyError, TypeError):
            return p.stat().st_mtime * 1000

    return sorted(entries, key=when)


def _invocation_runs(client: MlflowClient, experiment: str, invocation_id: str) -> list[Run]:
    from mlflow.entities import ViewType

    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            [exp.experiment_id],
            filter_string=f"tags.`{TAG_INVOCATION}` = '{invocation_id}'",
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=1000,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _replay(uri: str, entry: Path) -> tuple[str, str | None]:
    """Replay one spool entry; returns (invocation id, new run id or None if already there)."""
    meta: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        meta = json.loads((entry / "meta.json").read_text(encoding="utf-8"))
    summary = RunSummary.from_json((entry / "summary.json").read_text(encoding="utf-8"))
    invocation_id = str(meta.get("invocation_id") or summary.tags.get(TAG_INVOCATION) or entry.name)
    experiment = str(meta.get("experiment") or DEFAULT_EXPERIMENT)
    end_ms = int(meta.get("end_ms") or time.time() * 1000)

    with _open_store(uri, None, hold=True) as (client, _):
        existing = _invocation_runs(client, experiment, invocation_id)
        complete = [
            r
            for r in existing
            if r.data.tags.get(TAG_ROLE) == ROLE_INVOCATION and r.data.tags.get(TAG_COMPLETE) == "true"
        ]
        if complete:
            return invocation_id, None
        for run in existing:  # a partial write (the store died mid-invocation): replace it
            client.delete_run(run.info.run_id)
    run_id = _write_invocation(uri, experiment, summary, invocation_id, end_ms, entry / "artifacts")
    return invocation_id, run_id


def sync(tracking_uri: str | None) -> SyncReport:
    """Replay ``<home>/spool`` into the store, exactly once per invocation.

    An invocation whose complete parent run (tag ``bnverify.invocation_id``) is already in
    the store is skipped; a partial one left by a store that died mid-write is deleted and
    logged again.  Each entry is removed from the spool once it is in the store, so a second
    sync adds nothing.  Stops at the first failure (the store is probably down again) and
    reports the rest as pending.  Never raises.
    """
    from filelock import FileLock, Timeout

    uri = resolve_tracking_uri(tracking_uri)
    report = SyncReport(tracking_uri=uri)
    entries = spooled_invocations()
    if not entries:
        return report
    if not mlflow_available():
        report.failed.append(("*", "mlflow is not installed (pip install mlflow)"))
        report.pending.extend(e.name for e in entries)
        return report
    lock = FileLock(str(spool_dir() / ".sync.lock"))
    try:
        lock.acquire(timeout=_lock_timeout())
    except Timeout:
        report.failed.append(("*", "another `bnverify sync` is running on this spool"))
        return report
    try:
        with _tracking_context():
            for i, entry in enumerate(entries):
                if not entry.is_dir():
                    continue  # replayed by someone else meanwhile
                try:
                    invocation_id, run_id = _replay(uri, entry)
                except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - report, keep the entry
                    report.failed.append((entry.name, _describe_error(e)))
                    report.pending.extend(p.name for p in entries[i + 1 :])
                    break
                if run_id is None:
                    report.skipped.append(invocation_id)
                else:
                    report.replayed.append((invocation_id, run_id))
                shutil.rmtree(entry, ignore_errors=True)
    finally:
        lock.release()
    return report


# --------------------------------------------------------------------------- recorders


class Recorder(Protocol):
    """What the plugin holds: an MLflow recorder, or the null one under ``--no-tracking``."""

    def log(self, summary: RunSummary, artifacts: Mapping[str, ArtifactValue] | None = None) -> LogOutcome: ...


@dataclass
class MlflowRecorder:
    tracking_uri: str | None = None
    experiment: str | None = None

    def log(self, summary: RunSummary, artifacts: Mapping[str, ArtifactValue] | None = None) -> LogOutcome:
        return log_invocation(summary, tracking_uri=self.tracking_uri, artifacts=artifacts, experiment=self.experiment)


class NullRecorder:
    """Tracking switched off: logs nothing, imports nothing."""

    def log(self, summary: RunSummary, artifacts: Mapping[str, ArtifactValue] | None = None) -> LogOutcome:
        return LogOutcome(None, None, "tracking: off")


def make_recorder(enabled: bool, tracking_uri: str | None = None, experiment: str | None = None) -> Recorder:
    """``MlflowRecorder`` when tracking is on, else ``NullRecorder``."""
    return MlflowRecorder(tracking_uri, experiment) if enabled else NullRecorder()


# --------------------------------------------------------------------------- queries (CLI)


def open_client(tracking_uri: str | None) -> tuple[MlflowClient, str]:
    """An ``MlflowClient`` on the resolved store (for reads: use inside ``query_context``)."""
    from mlflow import MlflowClient

    uri = resolve_tracking_uri(tracking_uri)
    return MlflowClient(tracking_uri=uri), uri


#: Short HTTP timeouts and quiet mlflow logging, for the read-only commands too.
query_context = _tracking_context


def invocation_runs(
    client: MlflowClient,
    experiment: str,
    *,
    target: str | None = None,
    commit_prefix: str | None = None,
    max_results: int = 20,
) -> list[Run]:
    """Complete parent runs, newest first, optionally for one target and commit prefix."""
    from mlflow.entities import ViewType

    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    clauses = [f"tags.`{TAG_ROLE}` = '{ROLE_INVOCATION}'", f"tags.`{TAG_COMPLETE}` = 'true'"]
    if target is not None:
        clauses.append(f"tags.target = '{_quote(target)}'")
    if commit_prefix:
        clauses.append(f"tags.`{TAG_COMMIT}` LIKE '{_quote(commit_prefix)}%'")
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=" and ".join(clauses),
        run_view_type=ViewType.ACTIVE_ONLY,
        max_results=max_results,
        order_by=["attributes.start_time DESC"],
    )
    return list(runs)


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def split_metric_key(key: str) -> tuple[str, str, str] | None:
    """``forward/test_x.float32.worst_ratio`` -> ``("forward", "test_x.float32", "worst_ratio")``.

    None for invocation-level keys (``summary.*``).
    """
    if "/" not in key:
        return None
    suite, rest = key.split("/", 1)
    if "." not in rest:
        return None
    check, metric = rest.rsplit(".", 1)
    return suite, check, metric

