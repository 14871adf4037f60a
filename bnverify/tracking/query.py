"""Reading the store back, for ``bnverify compare`` and ``history``: the complete parent
runs of a target, the split of a parent metric key into suite, check and metric, and the
context (short HTTP timeouts, quiet mlflow) the read-only commands run under.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bnverify.tracking.plan import (
    ROLE_INVOCATION,
    ROLE_SUITE,
    TAG_COMMIT,
    TAG_COMPLETE,
    TAG_ROLE,
    TAG_SUITE,
    from_store,
)
from bnverify.tracking.store import tracking_context

if TYPE_CHECKING:  # pragma: no cover - typing only
    from mlflow.entities import Run

    from mlflow import MlflowClient

#: Short HTTP timeouts and quiet mlflow logging, for the read-only commands too.
query_context = tracking_context


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


def suite_runs(client: MlflowClient, parent: Run) -> list[Run]:
    """The suite (child) runs of an invocation's parent run."""
    from mlflow.entities import ViewType

    return list(client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{_quote(parent.info.run_id)}' and tags.`{TAG_ROLE}` = '{ROLE_SUITE}'",
        run_view_type=ViewType.ACTIVE_ONLY,
        max_results=1000,
    ))


def invocation_metrics(client: MlflowClient, parent: Run, *, children: bool = True) -> dict[str, float]:
    """Every metric of an invocation as ``<suite>/<check>.<metric>`` (plus ``summary.*``).

    The parent run holds each check's ``pass`` and ``worst_ratio``; the suite runs hold the
    rest (``max_abs_err``, ``duration_s``, the check's own metrics, the last value of each
    series), which are merged in under the parent's key scheme.  Infinite values come back
    as inf (:func:`~bnverify.tracking.plan.from_store`).
    """
    merged = {k: from_store(v) for k, v in parent.data.metrics.items()}
    if children:
        for child in suite_runs(client, parent):
            suite = child.data.tags.get(TAG_SUITE)
            if not suite:
                continue
            for key, value in child.data.metrics.items():
                if key.startswith("suite."):
                    continue
                merged.setdefault(f"{suite}/{key}", from_store(value))
    return merged


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
