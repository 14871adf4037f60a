"""The store: opening an MLflow store (SQLite file, PostgreSQL/MySQL database or tracking
server) under the conditions bnverify talks to it in, serialising bnverify processes on one
store with a lock file, creating the experiment race-free, and writing one invocation.

:func:`write_invocation` raises on any failure; callers decide what a failure means
(:func:`bnverify.tracking.invocation.log_invocation` spools, ``bnverify sync`` reports).
mlflow is imported inside functions only.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from bnverify.results import RunSummary
from bnverify.tracking.config import (
    ENV_ARTIFACT_ROOT,
    ENV_LOCK_TIMEOUT,
    HTTP_DEFAULTS,
    home,
    is_database_uri,
    is_http_uri,
    lock_timeout,
    sqlite_path,
)
from bnverify.tracking.plan import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    KEY_VIEW_TAG,
    ROLE_INVOCATION,
    ROLE_SUITE,
    TAG_COMPLETE,
    TAG_INVOCATION,
    TAG_ROLE,
    TAG_SUITE,
    RunPlan,
    batches,
    is_current_key_view,
    key_view_tag_value,
    plan_invocation,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    from mlflow import MlflowClient

_log = logging.getLogger(__name__)


@contextlib.contextmanager
def tracking_context() -> Iterator[None]:
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


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Serialise bnverify processes on one machine that open the same database store.

    SQLite: held for the whole write (one writer; no "database is locked"), which also
    makes the first-time schema migration happen once.  Other databases: callers release
    it after the experiment exists (it guards only the migration and creation).
    """
    from filelock import FileLock, Timeout

    db = sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        lock_path = db.with_name(db.name + ".lock")
    elif is_database_uri(uri):
        digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
        lock_dir = home() / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        lock_path = lock_dir / f"store-{digest}.lock"
    else:
        yield
        return
    lock = FileLock(str(lock_path))
    timeout = lock_timeout()
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
    if is_http_uri(uri) or not is_database_uri(uri):
        return None
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", experiment) or "bnverify"
    root = os.environ.get(ENV_ARTIFACT_ROOT, "").strip()
    if root:
        if "://" in root:
            return root.rstrip("/") + "/" + name
        return (Path(root).expanduser().absolute() / name).as_uri()
    db = sqlite_path(uri)
    base = db.parent if db is not None else home()
    return (base / "artifacts" / name).as_uri()


def _get_or_create_experiment(client: MlflowClient, name: str, uri: str) -> str:
    """Race-safe get-or-create (``set_experiment`` is not: mlflow#12259).

    The experiment is tagged ``mlflow.experimentKind=custom_model_development`` so MLflow 3's
    UI opens it on its runs, not on the GenAI overview ("Traces 0"); a kind already set (by a
    person, in the UI) is left alone.  It also carries bnverify's saved view of the runs table
    (:data:`~bnverify.tracking.plan.KEY_VIEW_TAG`: the verdict and key metrics as columns),
    written when missing or when bnverify's definition of it changed.
    """
    from mlflow.exceptions import MlflowException

    last: Exception | None = None
    for attempt in range(5):
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                client.restore_experiment(exp.experiment_id)
            ensure_experiment_tags(client, str(exp.experiment_id), exp.tags or {})
            return str(exp.experiment_id)
        try:
            return str(client.create_experiment(
                name,
                artifact_location=_artifact_location(uri, name),
                tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND, KEY_VIEW_TAG: key_view_tag_value(int(time.time() * 1000))},
            ))
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS" and "already exists" not in str(e).lower():
                raise
            last = e
            time.sleep(0.05 * (attempt + 1))
    raise RuntimeError(f"could not get or create experiment {name!r}: {last}")


def ensure_experiment_tags(client: MlflowClient, experiment_id: str, tags: dict[str, str]) -> None:
    """Tag an existing experiment (``tags``: its tags now) as bnverify creates one: the kind
    when none is set, and bnverify's runs-table view when missing or out of date."""
    if not tags.get(EXPERIMENT_KIND_TAG):
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    if not is_current_key_view(tags.get(KEY_VIEW_TAG)):
        client.set_experiment_tag(experiment_id, KEY_VIEW_TAG, key_view_tag_value(int(time.time() * 1000)))


def _log_plan_batches(client: MlflowClient, run_id: str, plan: RunPlan, timestamp_ms: int) -> None:
    from mlflow.entities import Metric, Param, RunTag

    for ms, ps, ts in batches(plan.metrics, plan.params, plan.tags):
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

    db = sqlite_path(uri)
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
    if sqlite_path(uri) is not None or not is_database_uri(uri) or uri.startswith("sqlite"):
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
def open_store(uri: str, experiment: str | None, *, hold: bool | None = None) -> Iterator[tuple[MlflowClient, str | None]]:
    """An ``MlflowClient`` on ``uri`` and the experiment id (get-or-create; None if not asked).

    The client is built under the store lock, so the first-time schema migration of a
    database store runs once even when N processes open a fresh store together.  The lock
    is held for the whole block for SQLite (``hold`` None), else released once the
    experiment exists.
    """
    from mlflow import MlflowClient

    keep = sqlite_path(uri) is not None if hold is None else hold
    if is_database_uri(uri):  # a second of imports: pay it before queueing for the lock
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


class Written(NamedTuple):
    """Where an invocation landed: its parent run, that run's artifact root in the store and
    the experiment's id."""

    run_id: str
    artifact_uri: str
    experiment_id: str = ""


def write_invocation(
    uri: str,
    experiment: str,
    summary: RunSummary,
    invocation_id: str,
    end_ms: int,
    artifacts_dir: Path | None,
) -> Written:
    """Log one invocation to the store; returns the parent run.  Raises on failure."""
    plan = plan_invocation(summary, invocation_id)
    with open_store(uri, experiment) as (client, exp_id):
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
        return Written(parent_id, str(parent.info.artifact_uri or ""), str(exp_id))
