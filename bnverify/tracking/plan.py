"""Run planning: how one :class:`~bnverify.results.RunSummary` becomes MLflow runs, without
touching mlflow.  Owns the run layout (names, tag keys, metric keys, the parent run's
Markdown note) and the split of a run's metrics, params and tags into ``log_batch`` calls
under MLflow's limits.

Names are sanitised with :func:`bnverify.results.metric_name` (pytest ids contain ``[``,
``]`` and ``::``); suite names never contain ``/`` and metric names never contain ``.``,
so a parent key splits back into suite, check and metric unambiguously
(:func:`bnverify.tracking.query.split_metric_key`; ``bnverify compare`` relies on that).
"""

from __future__ import annotations

import contextlib
import getpass
import json
import math
import platform
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from bnverify.results import CheckResult, RunSummary, metric_name
from bnverify.tracking.config import (
    MAX_BATCH_BYTES,
    MAX_ENTITIES_PER_BATCH,
    MAX_KEY_LENGTH,
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VAL_LENGTH,
    mlflow_version,
    version,
)

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

MetricPoint = tuple[str, float, int]  # key, value, step


# --------------------------------------------------------------------------- names


def clean_key(*parts: str) -> str:
    """A key MLflow accepts for metrics, params and tags (no empty, ``.`` or ``..`` segments)."""
    raw = metric_name(*(str(p) for p in parts))
    segs = [s for s in raw.split("/") if s not in ("", ".", "..")]
    key = "/".join(s.strip() or "_" for s in segs)
    return (key or "_")[:MAX_KEY_LENGTH]


def _suite_key(suite: str) -> str:
    return clean_key(suite or "unknown").replace("/", "_")


def _metric_suffix(name: str) -> str:
    """A metric name within a check: no ``/`` and no ``.`` (so keys split back unambiguously)."""
    return clean_key(name).replace("/", "_").replace(".", "_")


def _check_keys(results: list[CheckResult]) -> list[str]:
    """One unique key per result of a suite, from ``check`` (or the node id's last part)."""
    seen: dict[str, int] = {}
    out: list[str] = []
    for r in results:
        base = clean_key(r.check or r.nodeid.rsplit("::", 1)[-1] or "check")[:180]
        n = seen.get(base, 0) + 1
        seen[base] = n
        out.append(base if n == 1 else f"{base}_{n}")
    return out


def _run_name(*parts: str) -> str:
    return " · ".join(p for p in parts if p)[:240]


# --------------------------------------------------------------------------- the run plan


@dataclass
class RunPlan:
    """Everything one MLflow run receives, built without touching mlflow."""

    name: str
    status: str
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: list[MetricPoint] = field(default_factory=list)
    duration_s: float = 0.0


@dataclass
class InvocationPlan:
    parent: RunPlan
    children: dict[str, RunPlan]


def _as_float(value: Any) -> float | None:
    if value is None or isinstance(value, str):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _check_metrics(r: CheckResult) -> list[MetricPoint]:
    """(metric suffix, value, step) for one check."""
    out: list[MetricPoint] = []
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


def _counts_metrics(prefix: str, results: list[CheckResult], duration_s: float) -> list[MetricPoint]:
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
        "version.bnverify": version("bnverify"),
        "version.torch": version("torch"),
        "version.numpy": version("numpy"),
        "version.mlflow": mlflow_version(),
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


def plan_invocation(summary: RunSummary, invocation_id: str) -> InvocationPlan:
    """The parent run and one child run per suite for ``summary``."""
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
    children: dict[str, RunPlan] = {}
    for suite, results in sorted(by_suite.items()):
        suite_duration = sum(_as_float(r.duration_s) or 0.0 for r in results)
        child_metrics = _counts_metrics("suite", results, suite_duration)
        for key, r in zip(_check_keys(results), results):
            for suffix, value, step in _check_metrics(r):
                child_metrics.append((f"{key}.{suffix}", value, step))
                parent_metrics.append((f"{suite}/{key}.{suffix}", value, step))
        failed = any(r.failed for r in results)
        children[suite] = RunPlan(
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
    parent = RunPlan(
        name=_run_name(target_label, summary.tier, verdict),
        status="FINISHED" if verdict == "passed" else "FAILED",
        tags=tags,
        params=params,
        metrics=parent_metrics,
        duration_s=float(summary.duration_s or 0.0),
    )
    return InvocationPlan(parent=parent, children=children)


def batches(
    metrics: list[MetricPoint],
    params: Mapping[str, str],
    tags: Mapping[str, str],
) -> Iterator[tuple[list[MetricPoint], list[tuple[str, str]], list[tuple[str, str]]]]:
    """Split into log_batch calls under mlflow's limits.

    Per call: at most 1000 metrics, 100 params, 100 tags, 1000 entities in all, and
    well under the 1 MB request size.
    """
    p_items = [(clean_key(k), str(v)[:MAX_PARAM_VAL_LENGTH]) for k, v in params.items()]
    t_items = [(clean_key(k), str(v)[:MAX_TAG_VAL_LENGTH]) for k, v in tags.items()]
    m_items = list(metrics)
    while p_items or t_items or m_items:
        size = 0
        ps: list[tuple[str, str]] = []
        ts: list[tuple[str, str]] = []
        ms: list[MetricPoint] = []
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
