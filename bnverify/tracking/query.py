"""Reading the store back, for ``bnverify compare`` and ``history``: the complete parent
runs of a target, the split of a parent metric key into suite, check and metric, and the
context (short HTTP timeouts, quiet mlflow) the read-only commands run under.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bnverify.tracking.plan import ROLE_INVOCATION, TAG_COMMIT, TAG_COMPLETE, TAG_ROLE
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
