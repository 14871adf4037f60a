"""Logging one invocation: :func:`log_invocation` stages the summary and artifacts, hands
them to the store (through the warm-up worker when one was prepared), and spools them when
the store fails.  It never raises and never changes a verdict.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from bnverify.results import RunSummary
from bnverify.tracking.config import (
    REDACTED,
    describe_error,
    env_secrets,
    is_http_uri,
    is_secret_name,
    mlflow_available,
    redact,
    redact_argv,
    resolve_experiment,
    resolve_tracking_uri,
    scrub,
    version,
)
from bnverify.tracking.plan import TAG_COMMAND, TAG_INVOCATION, ui_path
from bnverify.tracking.spool import ArtifactValue, move_to_spool, stage
from bnverify.tracking.warmup import deliver


class LogOutcome(NamedTuple):
    """What :func:`log_invocation` did: a run id, or the spool folder, and one line saying so.

    ``artifact_uri`` is the parent run's artifact root in the store (``file:///...``,
    ``mlflow-artifacts:/...``, ``s3://...``) when logged; an artifact named ``plots/x.png``
    is at ``artifact_uri + "/plots/x.png"`` (:meth:`artifact_location`).  ``experiment_id``
    is the experiment the run is in.
    """

    run_id: str | None
    spooled: Path | None
    message: str
    artifact_uri: str | None = None
    experiment_id: str | None = None

    def artifact_location(self, name: str) -> str | None:
        """Where the artifact ``name`` (as handed to :func:`log_invocation`) now lives:
        in the store when logged, in the spool folder when spooled, else None."""
        from bnverify.tracking.spool import artifact_relpath

        rel = artifact_relpath(name)
        if rel is None:
            return None
        if self.artifact_uri:
            return self.artifact_uri.rstrip("/") + "/" + rel
        if self.spooled is not None:
            return str(self.spooled / "artifacts" / rel)
        return None


def where_to_see(uri: str, experiment_id: str, *, explicit: bool = False) -> str:
    """Where the runs table shows the logged run, with bnverify's view of it (the verdict and
    key metrics as columns): the tracking server's address, or the ``bnverify ui`` command
    that serves a database store (``explicit``: the store was named by ``--tracking-uri``)."""
    if is_http_uri(uri) and experiment_id:
        return f"runs table: {redact(uri).rstrip('/')}/{ui_path(experiment_id)}"
    command = "bnverify ui" + (f" --tracking-uri {shlex.quote(redact(uri))}" if explicit else "")
    return f"runs table: `{command}`"


def command_line(argv: list[str] | None = None) -> str:
    """The command that ran (``bnverify check ...``, ``pytest ...``), secrets redacted."""
    args = list(sys.argv if argv is None else argv)
    if args:
        prog = os.path.basename(args[0]) or args[0]
        args[0] = {"__main__.py": "python -m pytest", "pytest": "pytest"}.get(prog, prog)
    return shlex.join(redact_argv(args))


def scrubbed(summary: RunSummary) -> RunSummary:
    """The summary without secrets: values of secret-named tags and params become ``***``;
    credentials in URIs and secret environment values are redacted from the others, from the
    target, the reproduce line and the check messages (it is logged and spooled as it is)."""
    secrets = env_secrets()

    def clean(key: str, value: object) -> object:
        if is_secret_name(key):
            return REDACTED
        if isinstance(value, str):
            return scrub(value, secrets)
        if isinstance(value, (list, tuple)):
            return [scrub(v, secrets) if isinstance(v, str) else v for v in value]
        return value

    results = [
        dataclasses.replace(r, message=scrub(r.message, secrets)) if r.message else r for r in summary.results
    ]
    return dataclasses.replace(
        summary,
        target=scrub(summary.target, secrets),
        reproduce=scrub(summary.reproduce, secrets),
        tags={str(k): str(clean(str(k), v)) for k, v in summary.tags.items()},
        params={str(k): clean(str(k), v) for k, v in summary.params.items()},
        results=results,
    )


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
            local SQLite default (:func:`~bnverify.tracking.config.resolve_tracking_uri`).
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
        tags = {TAG_COMMAND: command_line(), **summary.tags, TAG_INVOCATION: invocation_id}
        summary = scrubbed(dataclasses.replace(summary, tags=tags))
    except Exception as e:  # noqa: BLE001 - a summary this broken cannot be spooled usefully
        return LogOutcome(None, None, f"tracking: not logged ({describe_error(e)})")

    meta: dict[str, Any] = {
        "invocation_id": invocation_id,
        "experiment": exp_name,
        "tracking_uri": redact(uri),
        "end_ms": end_ms,
        "spooled_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "bnverify_version": version("bnverify"),
    }
    try:
        staging = Path(tempfile.mkdtemp(prefix="bnverify-track-"))
    except OSError as e:
        return LogOutcome(None, None, f"tracking WARNING: not logged, no temporary folder ({e}); the verdict stands")
    try:
        extra: dict[str, ArtifactValue] = {}
        try:
            from bnverify.tracking.plots import series_plots

            extra.update(series_plots(summary))
        except Exception as e:  # noqa: BLE001 - a plot must not lose the results
            extra["plots/series/error.txt"] = f"the series plots could not be drawn: {describe_error(e)}"
        try:
            notes = stage(staging, summary, {**extra, **(artifacts or {})}, meta)
        except Exception as e:  # noqa: BLE001 - a missing artifact must not lose the results
            notes = [f"staging failed: {describe_error(e)}"]
        note = f" ({'; '.join(notes)})" if notes else ""
        error: str
        if not mlflow_available():
            error = "mlflow is not installed (pip install mlflow)"
        else:
            try:
                written = deliver(uri, exp_name, summary, invocation_id, end_ms, staging)
                return LogOutcome(
                    written.run_id,
                    None,
                    f"tracking: logged run {written.run_id} to {redact(uri)}{note}; "
                    + where_to_see(uri, written.experiment_id, explicit=tracking_uri is not None),
                    written.artifact_uri or None,
                    written.experiment_id or None,
                )
            except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - never raise: spool
                error = describe_error(e)
        meta["error"] = error
        try:
            (staging / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")
            where = move_to_spool(staging, invocation_id)
        except Exception as e:  # noqa: BLE001 - not even the spool: say so, keep the verdict
            return LogOutcome(
                None,
                None,
                f"tracking WARNING: could not log to {redact(uri)} ({error}) "
                f"and could not spool ({describe_error(e)}); the verdict stands",
            )
        return LogOutcome(
            None,
            where,
            f"tracking WARNING: could not log to {redact(uri)} ({error}); results "
            f"spooled to {where}; replay them with `bnverify sync`{note}",
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
