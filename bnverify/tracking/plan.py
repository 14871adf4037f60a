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
import sys
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
    REDACTED,
    env_secrets,
    is_secret_name,
    mlflow_version,
    scrub,
    version,
)

# Tag keys.  Plain keys are what users filter on in the UI (``tags.target = "x"``).
TAG_INVOCATION = "bnverify.invocation_id"
TAG_ROLE = "bnverify.role"  # "invocation" (parent) or "suite" (child)
TAG_COMPLETE = "bnverify.complete"  # "true", set last: a parent without it is partial
TAG_SUITE = "suite"
TAG_COMMIT = "git.commit"
TAG_COMMAND = "bnverify.command"  # the command line, secrets redacted
TAG_INFINITE = "bnverify.infinite_metrics"  # metric keys whose value is +/-inf (see STORED_INF)
#: The experiment tag MLflow 3's UI reads to choose an experiment's landing page, and the
#: value for "custom model development" (the runs table, not the GenAI "Traces" overview).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
#: MLflow 3's UI keeps an experiment's saved runs-table views as experiment tags with this
#: prefix (``EXPERIMENT_PAGE_VIEW_STATE_SHARE_TAG_PREFIX``): the "Views" menu lists them, and
#: ``#/experiments/<id>/runs?viewStateShareKey=<view id>`` opens one.
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
#: bnverify's view: the verdict and the key metrics as the runs table's columns.
KEY_VIEW_ID = "bnverify-key-metrics"
KEY_VIEW_TAG = VIEW_TAG_PREFIX + KEY_VIEW_ID
KEY_VIEW_NAME = "bnverify: verdict and key metrics"
#: The parent run's keys the view shows, in this order, as MLflow names its table columns
#: (``<type>.`<key>```).  The run's duration is MLflow's own "Duration" column (always shown):
#: bnverify sets the parent run's start and end from the invocation's duration.
KEY_COLUMNS = (
    "tags.`verdict`",
    "metrics.`summary.failed`",
    "metrics.`summary.worst_ratio`",
)
#: Column ids of MLflow's runs table: the run name and the duration.
_RUN_NAME_COLUMN = "attributes.`Run Name`"
_DURATION_COLUMN = "duration"
#: Pixel widths: the run name wide enough for ``FAIL 13/19 · <36-character target> · quick``.
_KEY_VIEW_WIDTHS = {_RUN_NAME_COLUMN: 360, KEY_COLUMNS[0]: 90, KEY_COLUMNS[1]: 130, KEY_COLUMNS[2]: 170}
#: URL query of the runs page that opens bnverify's view, in the "Model training" sidebar
#: (``workflowType``; a new browser profile starts on the GenAI one).
KEY_VIEW_QUERY = f"workflowType=machine_learning&viewStateShareKey={KEY_VIEW_ID}"


def key_view_state() -> dict[str, Any]:
    """The runs-table state of bnverify's view, in the fields of MLflow's ``ExperimentPageUIState``:
    the selected columns, their order (after the run name, which with "Created" stays first) and
    widths.  Everything else is MLflow's default."""
    return {
        "selectedColumns": list(KEY_COLUMNS),
        "columnOrder": [_RUN_NAME_COLUMN, *KEY_COLUMNS, _DURATION_COLUMN],
        "columnWidths": dict(_KEY_VIEW_WIDTHS),
    }


def key_view_tag_value(created_ms: int) -> str:
    """The experiment tag value MLflow's UI reads as a saved view (``savedViewEnvelope.ts``:
    ``name``, ``createdAt`` and ``state``, the state plain JSON)."""
    state = json.dumps(key_view_state(), sort_keys=True)
    return json.dumps({"name": KEY_VIEW_NAME, "createdAt": int(created_ms), "state": state})


def is_current_key_view(value: str | None) -> bool:
    """Whether ``value`` (the tag as stored) is the view :func:`key_view_tag_value` writes now,
    whatever its ``createdAt``."""
    try:
        got = json.loads(value or "")
        return bool(got.get("name") == KEY_VIEW_NAME and json.loads(got.get("state")) == key_view_state())
    except (TypeError, ValueError, AttributeError):
        return False


def ui_path(experiment_id: str, run_id: str | None = None) -> str:
    """The UI's address (after the server's root) of an experiment's runs table in bnverify's
    view, or of one run's page."""
    if run_id:
        return f"#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"
    return f"#/experiments/{experiment_id}/runs?{KEY_VIEW_QUERY}"


#: What an infinite metric reads back as: MLflow's SQL store (SQLite, PostgreSQL, and a
#: tracking server in front of one) stores +/-inf as +/-``sys.float_info.max``
#: (``SqlAlchemyStore._log_metrics``); NaN it keeps as NaN.  Read back, a value at this
#: magnitude is taken as inf (:func:`from_store`), and the run's tag ``bnverify.infinite_metrics``
#: names the keys that were infinite when logged.
STORED_INF = sys.float_info.max
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


#: A run name's target part is cut to this many characters (MLflow's runs table shows
#: about 40-50 characters of a name before cutting it; the verdict comes first anyway).
MAX_NAME_TARGET = 36


def _short(text: str, n: int) -> str:
    """``text`` cut in the middle to at most ``n`` characters (a target's module and class both stay)."""
    if len(text) <= n:
        return text
    head = (n - 1) // 2
    return text[:head] + "…" + text[len(text) - (n - 1 - head) :]


def _run_name(*parts: str) -> str:
    return " · ".join(p for p in parts if p)[:240]


def verdict_label(results: list[CheckResult]) -> str:
    """``FAIL 3/72`` (failed of the checks that ran) or ``PASS 72/72`` (passed of those that
    ran); skipped checks did not run and are not counted."""
    ran = [r for r in results if r.outcome != "skipped"]
    failed = sum(1 for r in ran if r.failed)
    if failed:
        return f"FAIL {failed}/{len(ran)}"
    return f"PASS {sum(1 for r in ran if r.passed)}/{len(ran)}"


def from_store(value: float) -> float:
    """A metric as read back from MLflow: +/-:data:`STORED_INF` is the inf that was logged."""
    if math.isfinite(value) and abs(value) >= STORED_INF:
        return math.copysign(math.inf, value)
    return value


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


def _parent_check_metrics(r: CheckResult) -> list[MetricPoint]:
    """What the parent run holds per check: ``pass`` (absent when skipped) and, for a
    tolerance comparison, ``worst_ratio``.  Everything else is on the suite's child run, so
    the parent's charts and compare view are not flooded with one chart per statistic."""
    out: list[MetricPoint] = []
    if r.passed:
        out.append(("pass", 1.0, 0))
    elif r.failed:
        out.append(("pass", 0.0, 0))
    ratio = _as_float(r.worst_ratio)
    if ratio is not None:
        out.append(("worst_ratio", ratio, 0))
    return out


def _check_metrics(r: CheckResult) -> list[MetricPoint]:
    """(metric suffix, value, step) for one check, as its suite's child run holds them."""
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


def ratio_text(ratio: float | None) -> str:
    """An err/tol ratio for people: ``0.31``, ``2.4e+03``, ``inf``, ``nan``; empty for none."""
    if ratio is None:
        return ""
    if math.isnan(ratio):
        return "nan"
    if math.isinf(ratio):
        return "inf" if ratio > 0 else "-inf"
    return f"{ratio:.3g}"


def _line_after(message: str, label: str) -> str:
    for line in message.splitlines():
        text = line.strip()
        if text.startswith(label):
            return text[len(label) :].strip()
    return ""


def _md(text: str, n: int) -> str:
    text = " ".join(text.split()).replace("|", "\\|").replace("`", "'")
    return text if len(text) <= n else text[: n - 1] + "…"


def _note(summary: RunSummary, invocation_id: str) -> str:
    """The parent run's description (``mlflow.note.content``, Markdown).

    MLflow shows its first lines and hides the rest behind "Show more", so it opens with the
    verdict and the failed checks (err/tol and likely cause, one line each), then the
    counts, the other outcomes that need a look (known deviations, skips) and the identity.
    """
    c = summary.counts
    bad = [r for r in summary.results if r.failed]
    lines = [f"**{verdict_label(summary.results)}** `{summary.target}`"]
    if bad:
        lines += ["", f"**Failed ({len(bad)}):**"]
        for r in bad[:40]:
            message = (r.message or "").strip()
            first = message.splitlines()[0] if message else r.outcome
            ratio = ratio_text(_as_float(r.worst_ratio))
            cause = _line_after(message, "likely cause:")
            item = f"- `{_md(r.suite + '/' + (r.check or r.nodeid), 90)}`"
            item += f" err/tol **{ratio}**" if ratio else ""
            item += f": {_md(cause, 160)}" if cause else f": {_md(first, 160)}"
            lines.append(item)
        if len(bad) > 40:
            lines.append(f"- ... and {len(bad) - 40} more (summary.json)")
    lines += [
        "",
        " · ".join(f"{k} {v}" for k, v in c.items() if v) or "no checks ran",
        "",
        (
            f"kind {summary.kind}, convention {summary.convention}, tier {summary.tier}, "
            f"device {summary.device}, seed {summary.seed}; invocation `{invocation_id}`"
        ),
    ]
    if summary.reproduce:
        lines += ["", f"reproduce: `{_md(summary.reproduce, 300)} --seed {summary.seed}`"]
    others = [r for r in summary.results if not r.failed and r.outcome in ("xfailed", "xpassed", "skipped")]
    if others:
        lines += ["", f"**Other outcomes ({len(others)}):**"]
        for r in others[:30]:
            why = (r.message or "").strip().splitlines()
            lines.append(f"- {r.outcome} `{_md(r.suite + '/' + r.check, 90)}`" + (f": {_md(why[0], 120)}" if why else ""))
        if len(others) > 30:
            lines.append(f"- ... and {len(others) - 30} more")
    text = "\n".join(lines)
    return text if len(text) <= MAX_TAG_VAL_LENGTH - 10 else text[: MAX_TAG_VAL_LENGTH - 12] + "\n…"


def safe_value(key: str, value: object, secrets: list[str]) -> str:
    """A tag or param value fit to log: ``***`` under a secret-named key, else the text with
    credentials in URIs and secret environment values redacted."""
    if is_secret_name(key):
        return REDACTED
    return scrub(value if isinstance(value, str) else json.dumps(value, default=str), secrets)


def _infinite(metrics: list[MetricPoint]) -> str:
    keys = sorted({k for k, v, _ in metrics if math.isinf(v)})
    text = ",".join(keys)
    return text if len(text) <= MAX_TAG_VAL_LENGTH else text[: MAX_TAG_VAL_LENGTH - 1] + "…"


def plan_invocation(summary: RunSummary, invocation_id: str) -> InvocationPlan:
    """The parent run and one child run per suite for ``summary``."""
    verdict = summary.verdict
    commit = _git_commit(summary.tags)
    target_label = _short(scrub(summary.target), MAX_NAME_TARGET)

    secrets = env_secrets()
    tags: dict[str, str] = dict(_auto_tags())
    tags.update({str(k): safe_value(str(k), v, secrets) for k, v in summary.tags.items()})
    tags.update({
        "target": scrub(summary.target, secrets),
        "kind": summary.kind,
        "convention": summary.convention,
        "tier": summary.tier,
        "device": summary.device,
        "verdict": verdict,
        TAG_INVOCATION: invocation_id,
        TAG_ROLE: ROLE_INVOCATION,
        "mlflow.note.content": scrub(_note(summary, invocation_id), secrets),
    })
    if commit:
        tags[TAG_COMMIT] = commit
        tags["mlflow.source.git.commit"] = commit

    params = {str(k): safe_value(str(k), v, secrets) for k, v in summary.params.items()}
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
            for suffix, value, step in _parent_check_metrics(r):
                parent_metrics.append((f"{suite}/{key}.{suffix}", value, step))
        failed = any(r.failed for r in results)
        child_tags = {
            "target": tags["target"],
            "kind": summary.kind,
            "convention": summary.convention,
            "tier": summary.tier,
            "device": summary.device,
            TAG_SUITE: suite,
            "verdict": "failed" if failed else "passed",
            **({TAG_COMMIT: commit} if commit else {}),
        }
        if any(math.isinf(v) for _, v, _ in child_metrics):
            child_tags[TAG_INFINITE] = _infinite(child_metrics)
        children[suite] = RunPlan(
            name=_run_name(verdict_label(results), suite, target_label),
            status="FAILED" if failed else "FINISHED",
            tags=child_tags,
            metrics=child_metrics,
            duration_s=suite_duration,
        )
    if any(math.isinf(v) for _, v, _ in parent_metrics):
        tags[TAG_INFINITE] = _infinite(parent_metrics)
    parent = RunPlan(
        name=_run_name(verdict_label(summary.results), target_label, summary.tier),
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
