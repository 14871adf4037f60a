"""The spool: an invocation staged as files (``summary.json``, ``meta.json``,
``artifacts/``), kept in ``<home>/spool/<invocation id>/`` when the store could not take
it, and :func:`sync` (``bnverify sync``), which replays the spool into a store exactly once.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Union

from bnverify.results import RunSummary
from bnverify.tracking.config import (
    DEFAULT_EXPERIMENT,
    describe_error,
    lock_timeout,
    mlflow_available,
    redact,
    resolve_tracking_uri,
    safe_artifact_path,
    spool_dir,
)
from bnverify.tracking.plan import ROLE_INVOCATION, TAG_COMPLETE, TAG_INVOCATION, TAG_ROLE
from bnverify.tracking.store import open_store, tracking_context, write_invocation

if TYPE_CHECKING:  # pragma: no cover - typing only
    from mlflow.entities import Run

    from mlflow import MlflowClient

ArtifactValue = Union[str, bytes, "os.PathLike[str]"]


# --------------------------------------------------------------------------- staging and spool


def artifact_relpath(name: str) -> str | None:
    """The relative path an artifact handed over as ``name`` is stored under (None: refused).

    Names come from user input (target specs, check ids, suite names): each component keeps
    only ``[A-Za-z0-9._+=@-]``, ``.``/``..``/empty components and a leading ``/`` or drive
    are dropped, and components and the whole path are bounded
    (:func:`~bnverify.tracking.config.safe_artifact_path`)."""
    return safe_artifact_path(name)


def _safe_relpath(name: str) -> PurePosixPath | None:
    rel = artifact_relpath(name)
    return PurePosixPath(rel) if rel else None


def stage(
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


def move_to_spool(staging: Path, invocation_id: str) -> Path:
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
        uri = redact(self.tracking_uri)
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

    with open_store(uri, None, hold=True) as (client, _):
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
    written = write_invocation(uri, experiment, summary, invocation_id, end_ms, entry / "artifacts")
    return invocation_id, written.run_id


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
        lock.acquire(timeout=lock_timeout())
    except Timeout:
        report.failed.append(("*", "another `bnverify sync` is running on this spool"))
        return report
    try:
        with tracking_context():
            for i, entry in enumerate(entries):
                if not entry.is_dir():
                    continue  # replayed by someone else meanwhile
                try:
                    invocation_id, run_id = _replay(uri, entry)
                except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - report, keep the entry
                    report.failed.append((entry.name, describe_error(e)))
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
