"""MLflow tracking: one parent run per ``bnverify check`` invocation, one child run per suite.

The controller process calls :func:`log_invocation` once, at the end, with the
whole :class:`~bnverify.results.RunSummary`.  It never raises: when the store
cannot be reached, or mlflow is not installed, the summary and its artifacts
are spooled to ``<home>/spool/<invocation id>/`` and :func:`sync` (``bnverify
sync``) replays them later, exactly once.  :func:`prepare`, called when the session
starts, opens the store in a worker process while the checks run.

What lands in the store (see mlflow/README.md for the full table):

* experiment ``bnverify`` (or ``$BNVERIFY_EXPERIMENT``), created race-free, tagged
  ``mlflow.experimentKind=custom_model_development`` (MLflow 3 opens it on its runs);
* parent run ``FAIL 3/72 · <target> · <tier>`` (verdict first), status FINISHED when the
  verdict is ``passed``, FAILED otherwise; tags ``target``, ``kind``, ``convention``,
  ``tier``, ``device``, ``verdict``, ``host``, ``git.commit``,
  ``version.{bnverify,torch,numpy,python,mlflow}``, ``bnverify.invocation_id``,
  ``bnverify.command`` and every tag the caller put in ``summary.tags``, secrets redacted;
  params from ``summary.params`` (plus ``seed``); a description listing the failed checks
  first; metrics ``summary.*`` and, per check, only ``<suite>/<check>.pass`` and (for a
  tolerance comparison) ``<suite>/<check>.worst_ratio``;
* one child run per suite, ``FAIL 1/8 · <suite> · <target>``, holding ``suite.*`` and
  every ``<check>.<metric>``: ``pass`` (1 passed, 0 failed; absent when skipped),
  ``skipped``, ``worst_ratio`` (largest error over its tolerance), ``max_abs_err``,
  ``duration_s``, each entry of ``CheckResult.metrics``, and each entry of
  ``CheckResult.series`` logged with ``step`` = index (accuracy per epoch);
* artifacts on the parent: ``summary.json``, whatever the caller passes, and one overlaid
  plot per check with series (:mod:`~bnverify.tracking.plots`).

The modules, by what they own:

* :mod:`~bnverify.tracking.config`: URIs, the home folder, environment variables,
  timeouts, MLflow's request limits, redaction;
* :mod:`~bnverify.tracking.plan`: the run layout (names, tag and metric keys) and the
  ``log_batch`` chunks, without mlflow;
* :mod:`~bnverify.tracking.store`: opening a store, its lock, the experiment, writing
  one invocation;
* :mod:`~bnverify.tracking.spool`: staging, the spool and ``sync``;
* :mod:`~bnverify.tracking.warmup`: the store warm-up worker (``prepare``);
* :mod:`~bnverify.tracking.invocation`: ``log_invocation``;
* :mod:`~bnverify.tracking.query`: reading runs back for ``compare`` and ``history``;
* :mod:`~bnverify.tracking.plots`: each check's series overlaid in one plot.

mlflow is imported inside functions only.
"""

from __future__ import annotations

from bnverify.tracking.config import (
    HTTP_DEFAULTS,
    default_tracking_uri,
    mlflow_available,
    resolve_experiment,
    resolve_tracking_uri,
    spool_dir,
)
from bnverify.tracking.invocation import LogOutcome, log_invocation
from bnverify.tracking.plan import ROLE_SUITE, TAG_COMMIT, TAG_ROLE
from bnverify.tracking.query import invocation_runs, query_context, split_metric_key
from bnverify.tracking.spool import spooled_invocations, sync
from bnverify.tracking.warmup import prepare

__all__ = [
    "HTTP_DEFAULTS",
    "ROLE_SUITE",
    "TAG_COMMIT",
    "TAG_ROLE",
    "LogOutcome",
    "default_tracking_uri",
    "invocation_runs",
    "log_invocation",
    "mlflow_available",
    "prepare",
    "query_context",
    "resolve_experiment",
    "resolve_tracking_uri",
    "split_metric_key",
    "spool_dir",
    "spooled_invocations",
    "sync",
]
