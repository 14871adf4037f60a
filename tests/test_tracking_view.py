"""bnverify's saved view of MLflow's runs table (the verdict and key metrics as columns) and the
links that open it, against real SQLite stores and the installed MLflow UI bundle.

The view is an experiment tag MLflow's UI reads (``mlflow.sharedViewState.<id>``); what the UI
makes of it in a browser is tested in tests/test_ui_browser.py (when Chromium is installed).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from bnverify import tracking, tracking_cli
from bnverify.tracking.invocation import where_to_see
from bnverify.tracking.plan import (
    KEY_COLUMNS,
    KEY_VIEW_ID,
    KEY_VIEW_NAME,
    KEY_VIEW_TAG,
    VIEW_TAG_PREFIX,
    is_current_key_view,
    key_view_state,
    key_view_tag_value,
    ui_path,
)
from tests.test_tracking import client_for, copy_store, free_port, isolate, make_migrated_db, make_summary


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return isolate(tmp_path, monkeypatch)


@pytest.fixture(scope="module")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_migrated_db(tmp_path_factory.mktemp("template"))


@pytest.fixture
def store(tmp_path: Path, migrated_db: Path) -> str:
    return copy_store(tmp_path, migrated_db)


def view_of(uri: str, experiment: str = "bnverify") -> dict[str, Any]:
    exp = client_for(uri).get_experiment_by_name(experiment)
    return dict(json.loads(exp.tags[KEY_VIEW_TAG]))


def column_key(column: str) -> tuple[str, str]:
    """``metrics.`summary.failed``` -> ("metrics", "summary.failed")."""
    kind, _, quoted = column.partition(".")
    return kind, quoted.strip("`")


def test_a_new_experiment_carries_the_view_of_the_key_columns(store: str) -> None:
    out = tracking.log_invocation(make_summary(own_plots=False), tracking_uri=store)
    assert out.run_id and out.experiment_id
    envelope = view_of(store)
    assert envelope["name"] == KEY_VIEW_NAME and isinstance(envelope["createdAt"], int)
    state = json.loads(envelope["state"])
    assert state == key_view_state()
    assert state["selectedColumns"] == list(KEY_COLUMNS)
    assert state["columnOrder"][0] == "attributes.`Run Name`" and state["columnOrder"][1:4] == list(KEY_COLUMNS)
    # every column names a key the parent run has (a renamed summary metric would leave an empty column)
    parent = client_for(store).get_run(out.run_id)
    held = {"metrics": parent.data.metrics, "tags": parent.data.tags}
    for column in KEY_COLUMNS:
        kind, key = column_key(column)
        assert key in held[kind], column
    assert parent.data.tags["verdict"] == "failed"
    assert parent.data.metrics["summary.failed"] == 1.0
    assert parent.data.metrics["summary.worst_ratio"] == pytest.approx(0.9)


def test_an_existing_experiment_gets_the_view_once_and_an_outdated_one_is_replaced(store: str, tmp_path: Path) -> None:
    c = client_for(store)
    # made before bnverify had a view: no tags (artifacts in tmp_path, not mlflow's ./mlruns in the repo)
    exp_id = c.create_experiment("bnverify", artifact_location=(tmp_path / "artifacts").as_uri())
    tracking.log_invocation(make_summary(own_plots=False), tracking_uri=store)
    first = view_of(store)
    assert json.loads(first["state"]) == key_view_state()
    assert c.get_experiment(exp_id).tags["mlflow.experimentKind"] == "custom_model_development"

    tracking.log_invocation(make_summary(fail=False, own_plots=False), tracking_uri=store)
    assert view_of(store)["createdAt"] == first["createdAt"]  # current: left alone

    stale = {"name": KEY_VIEW_NAME, "createdAt": 1, "state": json.dumps({"selectedColumns": ["metrics.`old`"]})}
    c.set_experiment_tag(exp_id, KEY_VIEW_TAG, json.dumps(stale))
    tracking.log_invocation(make_summary(own_plots=False), tracking_uri=store)
    assert json.loads(view_of(store)["state"]) == key_view_state()
    assert view_of(store)["createdAt"] > 1


def test_is_current_key_view_ignores_the_date_and_rejects_anything_else() -> None:
    assert is_current_key_view(key_view_tag_value(5)) and is_current_key_view(key_view_tag_value(10**13))
    for value in (None, "", "{", "[]", json.dumps({"name": KEY_VIEW_NAME}),
                  json.dumps({"name": "other", "createdAt": 1, "state": json.dumps(key_view_state())})):
        assert not is_current_key_view(value), value


def test_the_run_message_says_where_the_runs_table_is(store: str, home: Path) -> None:
    out = tracking.log_invocation(make_summary(own_plots=False), tracking_uri=store)
    assert out.message.startswith(f"tracking: logged run {out.run_id} to {store}")
    assert out.message.endswith(f"runs table: `bnverify ui --tracking-uri {store}`")

    default = tracking.log_invocation(make_summary(own_plots=False), tracking_uri=None)
    assert default.message.endswith("runs table: `bnverify ui`"), default.message

    link = where_to_see("http://user:secret-pass@mlflow.internal:5000/", "7")
    assert link == (
        "runs table: http://user:***@mlflow.internal:5000/#/experiments/7/runs"
        f"?workflowType=machine_learning&viewStateShareKey={KEY_VIEW_ID}"
    )
    assert ui_path("7", "abc") == "#/experiments/7/runs/abc?workflowType=machine_learning"


def test_ui_links_to_the_view_and_gives_an_older_experiment_its_view(store: str, tmp_path: Path) -> None:
    c = client_for(store)
    assert tracking_cli.view_url(store, "bnverify", "http://127.0.0.1:5000", update=True) is None  # none yet
    exp_id = c.create_experiment("bnverify", artifact_location=(tmp_path / "artifacts").as_uri())
    assert tracking_cli.view_url(store, "bnverify", "http://127.0.0.1:5000", update=False) is None  # no view: no link
    url = tracking_cli.view_url(store, "bnverify", "http://127.0.0.1:5000", update=True)
    assert url == f"http://127.0.0.1:5000/#/experiments/{exp_id}/runs?workflowType=machine_learning&viewStateShareKey={KEY_VIEW_ID}"
    assert is_current_key_view(c.get_experiment(exp_id).tags[KEY_VIEW_TAG])
    assert tracking_cli.view_url(store, "bnverify", "http://127.0.0.1:5000", update=False) == url


def test_ui_without_a_reachable_store_has_no_link(capsys: pytest.CaptureFixture[str]) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: refused, given up on in seconds
    t0 = time.monotonic()
    assert tracking_cli.view_url(dead, "bnverify", dead, update=False) is None
    assert time.monotonic() - t0 < 30
    assert "no link to the runs table" in capsys.readouterr().err


def _ui_bundle() -> Path:
    import mlflow

    return Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"


def test_the_installed_mlflow_ui_reads_the_view_tag_and_url_parameters() -> None:
    """The names the view relies on are in the installed UI's code: the share key parameter,
    the tag prefix, the saved-view envelope, the UI-state fields and the workflow parameter.
    An MLflow upgrade that renames one fails here, not silently in the user's browser."""
    js = _ui_bundle()
    if not js.is_dir():
        pytest.skip(f"this mlflow has no UI bundle ({js}; mlflow-skinny?)")
    text = "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in js.glob("*.js"))
    for needle in (
        f'"{VIEW_TAG_PREFIX}"',
        '"viewStateShareKey"',
        '"selectedColumns","columnOrder","columnWidths"',  # EXPERIMENT_PAGE_UI_STATE_FIELDS
        "createdAt",
        '"workflowType"',
        'MACHINE_LEARNING="machine_learning"',
        'DURATION:"Duration"',
        'RUN_NAME:"Run Name"',
    ):
        assert needle in text, needle
    assert re.search(r'METRICS:"metrics",TAGS:"tags"', text)

