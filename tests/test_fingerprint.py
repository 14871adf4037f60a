"""The fingerprint is measured: torch, the reference and each convention's implementation are told apart."""

from __future__ import annotations

import json

import pytest

from bnverify.cli import main
from bnverify.fingerprint import fingerprint, probe_defaults
from bnverify.loading import load_target


@pytest.mark.parametrize("spec,kind,convention", [
    ("torch", None, "torch"),
    ("reference", None, "torch"),
    ("tests.gallery.correct_conventions:KerasBatchNorm", None, "keras"),
    ("tests.gallery.correct_conventions:FlaxBatchNorm", None, "flax"),
    ("tests.gallery.correct_conventions:Cs231nBatchNorm", "numpy-cs231n", "cs231n"),
])
def test_matches_its_convention(spec, kind, convention):
    fp = fingerprint(load_target(spec, kind=kind))
    assert fp.entries["matches_convention"] == convention
    assert fp.entries["eps_placement"].startswith("inside")
    assert fp.entries["eval_updates_statistics"] == "no"
    assert fp.entries["eval_uses_running_statistics"] == "yes"


def test_torch_entries():
    e = fingerprint(load_target("torch")).entries
    assert e["momentum_meaning"].startswith("weight of the new batch")
    assert e["momentum_default"] == pytest.approx(0.1)
    assert e["running_var_estimator"].startswith("unbiased")
    assert e["eps_default"] == pytest.approx(1e-5)
    assert e["momentum_none"].startswith("cumulative")
    assert e["one_value_per_channel"].startswith("raises ValueError")
    assert e["supported_ranks"] == [2, 3, 4, 5]
    assert "float16" in e["supported_dtypes"]


def test_keras_is_biased_decay_with_eps_1e3():
    e = fingerprint(load_target("tests.gallery.correct_conventions:KerasBatchNorm")).entries
    assert e["momentum_meaning"].startswith("decay")
    assert e["momentum_default"] == pytest.approx(0.99)
    assert e["running_var_estimator"].startswith("biased")
    assert e["eps_default"] == pytest.approx(1e-3)


def test_bugs_show_in_the_fingerprint():
    e = fingerprint(load_target("tests.gallery.buggy_modes:EvalUpdatesStatsBatchNorm")).entries
    assert e["eval_updates_statistics"] == "yes"
    e = fingerprint(load_target("tests.gallery.buggy_modes:SingleValueNaNBatchNorm")).entries
    assert "NaN" in e["one_value_per_channel"]
    e = fingerprint(load_target("tests.gallery.buggy_modes:BiasedRunningVarBatchNorm")).entries
    assert e["running_var_estimator"].startswith("biased")
    assert e["matches_convention"].startswith("none")


def test_probe_defaults_measures_not_reads():
    d = probe_defaults(load_target("tests.gallery.buggy_modes:KerasEpsDefaultBatchNorm"))
    assert d.eps == pytest.approx(1e-3, rel=1e-3)
    assert d.weight_new == pytest.approx(0.1, abs=1e-3)


def test_cli_json_and_exit_codes(capsys):
    assert main(["fingerprint", "torch", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["entries"]["matches_convention"] == "torch"
    assert main(["fingerprint", "torch"]) == 0
    assert "running var estimator" in capsys.readouterr().out
    assert main(["fingerprint", "no_such_module_xyz:Thing"]) == 2


def test_eps_outside_the_square_root_is_measured_not_squared():
    """1/y at running_var 0 is eps itself when eps sits outside the square root: never eps^2 (1e-10)."""
    e = fingerprint(load_target("tests.gallery.buggy_truth:EpsOutsideSqrtBatchNorm")).entries
    assert e["eps_default"] == pytest.approx(1e-5, rel=1e-3)
    assert e["eps_placement"].startswith("outside")
    d = probe_defaults(load_target("tests.gallery.buggy_truth:EpsOutsideSqrtBatchNorm"))
    assert d.eps == pytest.approx(1e-5, rel=1e-3) and d.eps_placement == "outside"


def test_unmeasurable_entries_say_why_and_are_null_in_json(capsys):
    """A target whose eval path has no eps: no inf and no made-up eps, the reason instead; no numpy warning."""
    import warnings

    spec = "tests.gallery.course.bug_test_no_eps"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fp = fingerprint(load_target(spec))
    assert fp.entries["eps_default"] is None
    why = fp.not_measurable["eps_default"]
    assert "running_var=0" in why and "gave inf" in why
    table = fp.table()
    assert "not measurable: eval with running_var=0" in table
    row = next(ln for ln in table.splitlines() if ln.strip().startswith("eps default"))
    assert row.split("eps default", 1)[1].strip().startswith("not measurable: ")
    assert "()" not in table
    assert "default eps not measured" in fp.entries["matches_convention"]
    assert main(["fingerprint", spec, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["entries"]["eps_default"] is None
    assert data["not_measurable"]["eps_default"] == why


def test_not_supported_probes_keep_their_reason():
    fp = fingerprint(load_target("tests.gallery.buggy_functional:batch_norm_no_eps_in_training"))
    for key in ("eps_default", "momentum_default", "momentum_none"):
        assert fp.entries[key] is None
        assert fp.not_measurable[key].strip(" ()")
    assert "(defaults not measurable" not in fp.entries["matches_convention"]
    assert fp.entries["matches_convention"].endswith("(default eps not measurable for this kind)")
