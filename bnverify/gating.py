"""CI gating: known-deviation files, JUnit properties, the markdown summary and a workflow to copy.

**Known deviations** (``--xfails FILE``, array-api-tests' xfails file is the model): one check id
or glob per line, ``#`` and a reason after it::

    # our kernel keeps float16 sums in float16 (tracked in KERN-12)
    forward/test_forward_half*            # 16-bit accumulation, accepted for now
    test_running_stats[*-default]         # we document momentum as decay

A pattern matches ``suite/check[params]`` or ``check[params]`` (``fnmatch``).  A listed check that
fails is reported as xfailed with the reason and its own failure message, so the build stays green;
one that passes is reported as xpassed, which fails the gate only with ``--strict-xfails`` (the
deviation was fixed: take the line out); an entry that matches no check of the run is named in a
warning (a typo, or a check that was renamed), so the file cannot silently rot.

**JUnit** (``--junitxml``): one test case per check, with properties ``bnverify.target``,
``bnverify.convention``, ``bnverify.suite``, ``bnverify.worst_err_over_tol``, ``bnverify.max_abs_err``,
``bnverify.message`` (first line), ``bnverify.tolerance`` (the tolerance and where it comes from),
``bnverify.likely_cause`` and ``bnverify.reproduce``.

**Summary** (``--summary PATH``, and appended to ``$GITHUB_STEP_SUMMARY`` when that is set): the
verdict, failing checks with their one-line reasons, known deviations, the fingerprint, timings per
suite and the MLflow run, as markdown.

**Workflow**: ``bnverify ci-example`` prints a GitHub Actions workflow (quick tier on every push,
full tier nightly, results to a tracking server from a secret).
"""

from __future__ import annotations

import fnmatch
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnverify.results import RunSummary
from bnverify.tables import table

STEP_SUMMARY_ENV = "GITHUB_STEP_SUMMARY"


class XfailsError(Exception):
    """The known-deviations file cannot be read: a usage error (exit 2)."""


@dataclass
class XfailEntry:
    pattern: str
    reason: str
    where: str
    matched: int = 0


@dataclass
class Xfails:
    """The entries of a known-deviations file, and which checks they matched."""

    path: str
    entries: list[XfailEntry] = field(default_factory=list)

    @classmethod
    def read(cls, path: str) -> Xfails:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise XfailsError(f"cannot read the known-deviations file {path!r}: {exc.strerror or exc}") from None
        out = cls(path)
        for n, raw in enumerate(text.splitlines(), 1):
            pattern, _, reason = raw.partition("#")
            pattern = pattern.strip()
            if not pattern:
                continue
            if len(pattern.split()) != 1:
                raise XfailsError(f"{path}:{n}: one check id or glob per line, then '# reason'; got {raw.strip()!r}")
            out.entries.append(XfailEntry(pattern, reason.strip() or "known deviation", f"{path}:{n}"))
        return out

    def match(self, suite: str, check_id: str) -> XfailEntry | None:
        """The first entry matching ``suite/check_id`` or ``check_id``; counts the match."""
        for e in self.entries:
            if fnmatch.fnmatchcase(f"{suite}/{check_id}", e.pattern) or fnmatch.fnmatchcase(check_id, e.pattern):
                e.matched += 1
                return e
        return None

    def unmatched(self) -> list[XfailEntry]:
        return [e for e in self.entries if not e.matched]


def junit_properties(data: dict[str, Any], target: Any, reproduce: str) -> list[tuple[str, str]]:
    """Flat per-check properties for the JUnit XML (``data`` is what the check recorded)."""
    props = [("bnverify.target", str(target.spec)), ("bnverify.convention", str(target.convention.name)),
             ("bnverify.suite", str(data.get("suite", "")))]
    for key, name in (("worst_ratio", "bnverify.worst_err_over_tol"), ("max_abs_err", "bnverify.max_abs_err")):
        if data.get(key) is not None:
            props.append((name, f"{data[key]:.6g}"))
    message = str(data.get("message", "")).strip()
    if message:
        props.append(("bnverify.message", message.splitlines()[0][:500]))
        for label, name in (("likely cause:", "bnverify.likely_cause"), ("tolerance:", "bnverify.tolerance")):
            text = report_line(message, label)
            if text:
                props.append((name, text))
    props.append(("bnverify.reproduce", f"{reproduce} --suite {data.get('suite', '')}"))
    return props


def report_line(message: str, label: str) -> str:
    """The first line of a failure report that starts with ``label`` (``likely cause:``), without it."""
    for line in message.splitlines():
        text = line.strip()
        if text.startswith(label):
            return text.removeprefix(label).strip()
    return ""


def likely_cause(message: str) -> str:
    return report_line(message, "likely cause:")


def _first_line(text: str, n: int = 160) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return (line[: n - 1] + "…") if len(line) > n else line


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_summary(summary: RunSummary, *, fingerprint: str | None = None, run_link: str | None = None,
                     unmatched: list[str] | None = None) -> str:
    """The run as markdown, for CI pages."""
    c = summary.counts
    icon = "✅" if summary.verdict == "passed" else "❌"
    failed = [r for r in summary.results if r.failed]
    xfailed = [r for r in summary.results if r.outcome == "xfailed"]
    xpassed = [r for r in summary.results if r.outcome == "xpassed"]
    lines = [
        f"## {icon} bnverify: `{summary.target}` {summary.verdict.upper()}",
        "",
        f"{c['passed']} passed, {c['failed'] + c['error']} failed, {c['skipped']} skipped, {c['xfailed']} known "
        f"deviations, {c['xpassed']} unexpectedly passing, in {summary.duration_s:.1f} s; kind `{summary.kind}`, "
        f"convention `{summary.convention}`, tier `{summary.tier}`, device `{summary.device}`, seed {summary.seed}.",
        "",
        f"Reproduce: `{summary.reproduce or 'bnverify check ' + summary.target} --seed {summary.seed}`",
    ]
    rows: list[tuple[Any, ...]]
    if failed:
        rows = [(r.suite, f"`{r.check}`", _ratio(r.worst_ratio), _md_cell(_first_line(r.message)),
                 _md_cell(likely_cause(r.message))) for r in failed]
        lines += ["", "### Failing checks", "",
                  table(rows, ("suite", "check", "err/tol", "what", "likely cause"), markdown=True)]
    if xfailed or xpassed:
        rows = [(r.suite, f"`{r.check}`", r.outcome, _md_cell(_first_line(r.message))) for r in xfailed + xpassed]
        lines += ["", "### Known deviations", "", table(rows, ("suite", "check", "outcome", "reason"), markdown=True)]
    if unmatched:
        lines += ["", "**Known-deviation entries that matched no check:** " + ", ".join(f"`{u}`" for u in unmatched)]
    suites: dict[str, list[Any]] = {}
    for r in summary.results:
        suites.setdefault(r.suite, []).append(r)
    rows = [(s, len(rs), sum(not r.failed and r.outcome != "skipped" for r in rs), sum(r.failed for r in rs),
             f"{sum(r.duration_s for r in rs):.2f} s") for s, rs in sorted(suites.items())]
    lines += ["", "### Timings", "", table(rows, ("suite", "checks", "ok", "failed", "time"), markdown=True)]
    if fingerprint:
        lines += ["", "### Fingerprint", "", "```", fingerprint.strip(), "```"]
    if run_link:
        lines += ["", f"MLflow: {run_link}"]
    return "\n".join(lines) + "\n"


def _ratio(ratio: float | None) -> str:
    if ratio is None:
        return ""
    return "inf" if ratio == float("inf") else f"{ratio:.3g}"


def write_summary(text: str, path: str | None) -> list[str]:
    """Write to ``path`` and append to ``$GITHUB_STEP_SUMMARY``; returns where it went."""
    where = []
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text, encoding="utf-8")
        where.append(path)
    step = os.environ.get(STEP_SUMMARY_ENV)
    if step:
        with open(step, "a", encoding="utf-8") as fh:
            fh.write(text)
        where.append(f"${STEP_SUMMARY_ENV}")
    return where


def ci_example(target: str = "mypkg.bn:MyBatchNorm", extra: str = "", install: str = "pip install bnverify") -> str:
    """A GitHub Actions workflow that gates on bnverify: quick tier on every push, full tier nightly."""
    flags = f" {extra.strip()}" if extra.strip() else ""
    t = shlex.quote(target)

    def job(tier: str, when: str, minutes: int) -> str:
        command = (f"bnverify check {t}{flags} --tier {tier} --xfails bnverify-xfails.txt "
                   f"--junitxml bnverify-{tier}.xml --summary bnverify-{tier}.md")
        return f"""\
  {tier}:
    if: github.event_name {when} 'schedule'
    runs-on: ubuntu-latest
    timeout-minutes: {minutes}
    env:
      MLFLOW_TRACKING_URI: ${{{{ secrets.MLFLOW_TRACKING_URI }}}}
    steps:
      - uses: actions/checkout@v4
      - uses: actions/setup-python@v5
        with:
          python-version: "3.11"
      - run: {install}
      - run: touch bnverify-xfails.txt
      - run: {command}
      - uses: actions/upload-artifact@v4
        if: always()
        with:
          name: bnverify-{tier}
          path: |
            bnverify-{tier}.xml
            bnverify-{tier}.md
            .bnverify/
"""

    return """\
# bnverify in CI: the quick tier gates every push and pull request; the full tier (convergence)
# runs nightly. Results go to the team's MLflow server when the MLFLOW_TRACKING_URI secret is set
# (otherwise to a local store in the runner, uploaded as an artifact). Accepted deviations live in
# bnverify-xfails.txt (one check id or glob per line, '# reason'); an empty file is fine.
name: bnverify
on:
  push:
  pull_request:
  schedule:
    - cron: "0 3 * * *"
jobs:
""" + job("quick", "!=", 15) + job("full", "==", 60)
