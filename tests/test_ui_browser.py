"""The MLflow UI in a real browser: headless Chromium on `bnverify ui`.

A store gets two invocations (one failing check with per-epoch series, one passing), `bnverify ui`
serves it, and Chromium renders the link `bnverify ui` prints, the failing run's page and its
overlaid series plot.  The rendered DOM must show: the runs with verdict-first names, the verdict,
failed count and worst err/tol as the table's columns (bnverify's saved view), the description
with the failed check first, and the plot.  Screenshots go to ``$BNVERIFY_UI_SCREENSHOTS`` when
set (else the test's temporary folder).

Skipped, with the reason, when no Chromium binary is installed (Debian/Ubuntu:
``apt-get install chromium``; ``$BNVERIFY_CHROMIUM`` names another binary).
"""

from __future__ import annotations

import contextlib
import html
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from bnverify import tracking
from bnverify.tracking.plan import KEY_COLUMNS, KEY_VIEW_NAME, ui_path
from tests.test_tracking import client_for, free_port, isolate, make_summary, parents, runs_of

_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
#: Virtual-time budgets (ms) tried in turn until the page shows what is expected: the UI loads
#: its code, then fetches the experiment and its runs; a loaded machine needs the longer ones.
_BUDGETS = (15_000, 40_000, 90_000)


def chromium() -> str | None:
    named = os.environ.get("BNVERIFY_CHROMIUM", "").strip()
    if named:
        return shutil.which(named) or (named if Path(named).is_file() else None)
    return next((found for name in _NAMES if (found := shutil.which(name))), None)


pytestmark = pytest.mark.skipif(
    chromium() is None,
    reason="no Chromium binary on PATH (apt-get install chromium, or set BNVERIFY_CHROMIUM): "
    "the MLflow UI is checked in a real browser only where one is installed",
)


def _chrome(url: str, budget_ms: int, *, screenshot: Path | None = None, height: int = 1000) -> str:
    """Chromium's DOM of ``url`` after ``budget_ms`` of virtual time (or a screenshot of it)."""
    browser = chromium()
    assert browser is not None
    with tempfile.TemporaryDirectory(prefix="bnverify-chromium-") as profile:  # a fresh profile: no saved UI state
        cmd = [
            browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size=1600,{height}",
            f"--virtual-time-budget={budget_ms}",
            f"--screenshot={screenshot}" if screenshot else "--dump-dom",
            url,
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, f"chromium exited {done.returncode}: {done.stderr[-2000:]}"
    return done.stdout


def text_of(dom: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", re.sub(r"(?s)<(script|style)\b.*?</\1>", " ", dom))).split())


def render(url: str, expected: list[str], *, screenshot: Path | None = None, height: int = 1000) -> str:
    """The DOM of ``url`` once every string of ``expected`` is in it (longer budgets in turn)."""
    dom = ""
    for budget in _BUDGETS:
        dom = _chrome(url, budget, height=height)
        if all(e in dom for e in expected):
            if screenshot is not None:
                _chrome(url, budget, screenshot=screenshot, height=height)
            return dom
    missing = [e for e in expected if e not in dom]
    raise AssertionError(f"{url}: not in the page after {_BUDGETS[-1]} ms: {missing}\n{text_of(dom)[-3000:]}")


def header_columns(dom: str) -> list[str]:
    """The runs table's column ids, left to right (ag-grid's ``aria-colindex``; its DOM order differs)."""
    cells = {}
    for tag in re.findall(r'<div[^>]*class="ag-header-cell\b[^>]*>', dom):
        col, index = re.search(r'col-id="([^"]+)"', tag), re.search(r'aria-colindex="(\d+)"', tag)
        if col and index:
            cells.setdefault(html.unescape(col.group(1)), int(index.group(1)))
    return sorted(cells, key=cells.__getitem__)


@contextlib.contextmanager
def bnverify_ui(home: Path, log: Path) -> Iterator[str]:
    """`bnverify ui` on the store of ``home``; yields the runs-table link it prints."""
    port = free_port()
    env = {**os.environ, "BNVERIFY_HOME": str(home)}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bnverify.tracking_cli", "ui", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            found = re.search(r"verdict and key metrics as columns: (\S+)", log.read_text())
            if found:
                yield found.group(1)
                return
            if proc.poll() is not None:
                break
            time.sleep(0.25)
        raise AssertionError(f"`bnverify ui` printed no runs-table link:\n{log.read_text()[-3000:]}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)  # bnverify ui stops its server's whole group
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_the_ui_shows_verdicts_key_columns_failed_checks_first_and_the_plot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = isolate(tmp_path, monkeypatch)
    shots = Path(os.environ.get("BNVERIFY_UI_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    buggy = make_summary("pkg.mod:BuggyBN", own_plots=False)
    for r in buggy.results:  # target, reference and no-BN accuracy per epoch, as the convergence suite records them
        if r.suite == "convergence":
            r.series = {
                "target_acc": [0.80 * (1 - 0.7 ** (e + 1)) for e in range(15)],
                "reference_acc": [0.95 * (1 - 0.6 ** (e + 1)) for e in range(15)],
                "no_bn_acc": [0.90 * (1 - 0.85 ** (e + 1)) for e in range(15)],
                "target_loss": [1.5 * 0.8**e for e in range(15)],
                "reference_loss": [1.5 * 0.7**e for e in range(15)],
            }
    failing = tracking.log_invocation(buggy, tracking_uri=None)
    passing = tracking.log_invocation(make_summary("pkg.mod:GoodBN", fail=False, own_plots=False), tracking_uri=None)
    assert failing.run_id and passing.run_id and failing.experiment_id
    uri = tracking.default_tracking_uri()
    names = {r.info.run_id: r.info.run_name for r in parents(runs_of(uri))}
    fail_name, pass_name = names[failing.run_id], names[passing.run_id]
    assert fail_name.startswith("FAIL 1/39 · ") and pass_name.startswith("PASS 39/39 · ")
    plots = [f.path for f in client_for(uri).list_artifacts(failing.run_id, "plots/series/convergence")]
    assert plots, "the failing run has no overlaid series plot"

    with bnverify_ui(home, tmp_path / "ui.log") as table_url:
        base = table_url.split("/#/", 1)[0]
        assert table_url == f"{base}/{ui_path(failing.experiment_id)}"

        # the runs table, in bnverify's view: verdict-first names and the key columns
        dom = render(table_url, [fail_name, pass_name, KEY_VIEW_NAME, *(f'col-id="{c}"' for c in KEY_COLUMNS)],
                     screenshot=shots / "runs-table.png")
        columns = header_columns(dom)
        assert columns[columns.index(KEY_COLUMNS[0]):][: len(KEY_COLUMNS)] == list(KEY_COLUMNS), columns
        assert columns.index("attributes.`Run Name`") < columns.index(KEY_COLUMNS[0]), columns
        assert not any(c.startswith("metrics.") and c not in KEY_COLUMNS for c in columns), columns
        words = text_of(dom).split()
        assert "failed" in words and "passed" in words  # the verdict column's cells

        # the failing run's page: the description opens with the verdict and the failed check
        run_url = f"{base}/{ui_path(failing.experiment_id, failing.run_id)}"
        dom = render(run_url, ["Failed (1):", "modes/test_modes_0"], screenshot=shots / "run-description.png",
                     height=1900)  # MLflow 3 puts the description below the run's tags
        text = text_of(dom)
        assert fail_name in text
        assert text.index("FAIL 1/39 pkg.mod:BuggyBN") < text.index("Failed (1):")
        assert text.index("Failed (1):") < text.index("modes/test_modes_0") < text.index("passed 38")
        assert "running_var: expected unbiased" in text

        # the overlaid series plot, shown as an image on the run's artifact page
        plot = plots[0]
        art_url = (f"{base}/#/experiments/{failing.experiment_id}/runs/{failing.run_id}/artifacts/{plot}"
                   "?workflowType=machine_learning")
        dom = render(art_url, ['src="blob:', Path(plot).name], screenshot=shots / "series-plot.png")
        assert re.search(r'<img[^>]*\bsrc="blob:', dom), "no image on the artifact page"
        assert plot in text_of(dom)  # the image shown is that artifact (the UI fetched it into a blob)
        query = urllib.parse.urlencode({"path": plot, "run_uuid": failing.run_id})
        with urllib.request.urlopen(f"{base}/get-artifact?{query}", timeout=30) as r:  # what the UI fetches
            assert r.read(8) == b"\x89PNG\r\n\x1a\n"
