"""CI gating: known-deviation files, per-check JUnit properties, the markdown summary, the workflow example."""

from __future__ import annotations

import shlex
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from bnverify.cli import build_parser, main
from bnverify.gating import Xfails, XfailsError, ci_example
from bnverify.runner import check

REPO = Path(__file__).resolve().parents[1]
BUG = "tests.gallery.buggy_modules:UnbiasedVarianceBatchNorm"  # fails test_forward_train (and layouts, ill-cond.)


def _run(target, tmp_path, *extra, suites=("forward",)):
    return check(target, suites=suites, seed=0, max_examples=3, extra=list(extra))


def _outcomes(summary):
    return {r.check: r.outcome for r in summary.results}


def test_xfails_file_is_parsed_with_reasons(tmp_path):
    f = tmp_path / "x.txt"
    f.write_text("# header comment\n\nforward/test_forward_train*   # we use the m-1 variance\ntest_fold\n")
    xf = Xfails.read(str(f))
    assert [(e.pattern, e.reason) for e in xf.entries] == [
        ("forward/test_forward_train*", "we use the m-1 variance"), ("test_fold", "known deviation")]
    assert xf.match("forward", "test_forward_train[rank2-float32]").where.endswith("x.txt:3")
    assert xf.match("modes", "test_fold[float32]") is None  # globs are explicit: test_fold* would match
    f.write_text("two words # reason\n")
    with pytest.raises(XfailsError, match="x.txt:1: one check id or glob per line"):
        Xfails.read(str(f))
    with pytest.raises(XfailsError, match="cannot read"):
        Xfails.read(str(tmp_path / "missing.txt"))


def test_listed_failures_are_expected_and_the_rest_still_gate(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    f = tmp_path / "x.txt"
    f.write_text("forward/test_forward_train*  # accepted: m-1 normalisation\n"
                 "test_forward_layouts*  # same cause\ntest_forward_ill_conditioned*  # same cause\n"
                 "test_renamed_long_ago  # stale\n")
    code, summary = _run(BUG, tmp_path, "--bn-xfails", str(f))
    out = _outcomes(summary)
    assert out["test_forward_train[rank2-float32]"] == "xfailed"
    xf = next(r for r in summary.results if r.check == "test_forward_train[rank2-float32]")
    assert "accepted: m-1 normalisation" in xf.message and "unbiased (m-1) variance" in xf.message
    assert not any(r.failed for r in summary.results), _outcomes(summary)
    assert code == 0 and summary.verdict == "passed"


def test_listed_check_that_passes_is_xpassed_and_fails_only_when_strict(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    f = tmp_path / "x.txt"
    f.write_text("forward/test_forward_contract*  # we used to modify the input\nno_such_check  # typo\n")
    args = ["check", "torch", "--suite", "forward", "--seed", "0", "--max-examples", "3", "--no-tracking",
            "--xfails", str(f)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "known-deviation entry 'no_such_check'" in out and "matches no check" in out
    assert main([*args, "--strict-xfails"]) == 1
    assert main(["check", "torch", "--xfails", str(tmp_path / "missing.txt"), "--no-tracking"]) == 2


def test_junit_has_one_case_per_check_with_properties(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    xml = tmp_path / "j.xml"
    code, summary = _run(BUG, tmp_path, "--junitxml", str(xml))
    assert code == 1
    cases = ET.parse(xml).getroot().findall(".//testcase")
    assert len(cases) == len(summary.results)
    failed = [c for c in cases if c.find("failure") is not None]
    assert failed
    props = {p.get("name"): p.get("value") for p in failed[0].iter("property")}
    assert props["bnverify.target"] == BUG and props["bnverify.convention"] == "torch"
    assert float(props["bnverify.worst_err_over_tol"]) > 1
    assert "unbiased (m-1) variance" in props["bnverify.likely_cause"]
    assert "two-pass" in props["bnverify.tolerance"]
    assert props["bnverify.reproduce"].startswith(f"bnverify check {BUG} --suite forward")
    assert not any(p.get("name") == "bnverify" for p in ET.parse(xml).getroot().iter("property"))


def test_markdown_summary_goes_to_the_file_and_the_step_summary(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    step = tmp_path / "step.md"
    step.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step))
    md = tmp_path / "s.md"
    code, _ = _run(BUG, tmp_path, "--bn-summary", str(md))
    text = md.read_text()
    assert "FAILED" in text and "### Failing checks" in text and "unbiased (m-1) variance" in text
    assert "### Fingerprint" in text and "running var estimator" in text and "### Timings" in text
    assert step.read_text() == "earlier step\n" + text


def test_ci_example_is_valid_yaml_whose_commands_the_cli_accepts():
    text = ci_example("mypkg.bn:MyBatchNorm", "--kind torch-module")
    wf = yaml.safe_load(text)
    assert set(wf["jobs"]) == {"quick", "full"}
    assert "schedule" in wf[True] or "schedule" in wf.get("on", {})  # YAML 1.1 reads the key `on` as True
    commands = [s["run"] for job in wf["jobs"].values() for s in job["steps"]
                if str(s.get("run", "")).startswith("bnverify ")]
    assert len(commands) == 2
    parser = build_parser()
    for cmd in commands:
        args = parser.parse_args(shlex.split(cmd)[1:])
        assert args.target == "mypkg.bn:MyBatchNorm" and args.bn_xfails and args.bn_summary
    assert {parser.parse_args(shlex.split(c)[1:]).bn_tier for c in commands} == {"quick", "full"}


def test_ci_example_command_prints_it(capsys):
    assert main(["ci-example", "--target", "pkg:BN"]) == 0
    assert "bnverify check pkg:BN --tier quick" in capsys.readouterr().out


def test_readme_shows_the_printed_workflow():
    readme = (REPO / "README.md").read_text()
    assert "```yaml\n" + ci_example() + "```" in readme
