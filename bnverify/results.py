"""The result model: one ``CheckResult`` per executed check, one ``RunSummary`` per invocation.

Checks record their measurements on the pytest item (``user_properties``),
which pytest-xdist carries from workers back to the controller, so the
controller alone holds every result and alone writes to the tracking store.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

USER_PROPERTY_KEY = "bnverify"

OUTCOMES = ("passed", "failed", "skipped", "error", "xfailed", "xpassed")


@dataclass
class CheckResult:
    """One check on one target.

    ``worst_ratio`` is the largest observed error divided by its tolerance
    (below 1 passes); ``None`` for checks that are not a tolerance comparison.
    ``metrics`` holds further numbers (timings, accuracies) keyed by short names;
    ``series`` holds per-step values (accuracy per epoch), logged with steps.
    """

    nodeid: str
    suite: str
    check: str
    outcome: str
    duration_s: float = 0.0
    worst_ratio: float | None = None
    max_abs_err: float | None = None
    message: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    series: dict[str, list[float]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.outcome in ("passed", "xfailed")

    @property
    def failed(self) -> bool:
        """Fails the run. An ``xpassed`` known deviation does not (it does under ``--strict-xfails``,
        where pytest reports it as failed)."""
        return self.outcome in ("failed", "error")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CheckResult:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class RunSummary:
    """Everything one invocation measured: identity of the run plus its check results."""

    target: str
    kind: str
    convention: str
    tier: str
    device: str
    seed: int | None
    params: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    results: list[CheckResult] = field(default_factory=list)
    duration_s: float = 0.0
    reproduce: str = ""
    """``bnverify check TARGET`` with the flags that reload the target as it was loaded (kind, convention)."""

    @property
    def counts(self) -> dict[str, int]:
        out = {k: 0 for k in OUTCOMES}
        for r in self.results:
            out[r.outcome] = out.get(r.outcome, 0) + 1
        return out

    @property
    def verdict(self) -> str:
        return "failed" if any(r.failed for r in self.results) else "passed"

    def suites(self) -> list[str]:
        return sorted({r.suite for r in self.results})

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["verdict"] = self.verdict
        d["counts"] = self.counts
        return json.dumps(d, indent=2, sort_keys=True, default=_json_default)

    @classmethod
    def from_json(cls, text: str) -> RunSummary:
        d = json.loads(text)
        d.pop("verdict", None)
        d.pop("counts", None)
        d["results"] = [CheckResult.from_dict(r) for r in d.get("results", [])]
        return cls(**d)


def _json_default(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    return str(o)


_METRIC_BAD = re.compile(r"[^A-Za-z0-9_\-\. /]")


def metric_name(*parts: str) -> str:
    """A name MLflow accepts (alphanumerics, ``_ - . /`` and spaces) built from pytest ids.

    ``test_forward_train[float32]`` -> ``test_forward_train.float32``.
    """
    joined = "/".join(p for p in parts if p)
    joined = joined.replace("::", "/").replace("[", ".").replace("]", "")
    return _METRIC_BAD.sub("_", joined)[:250]
