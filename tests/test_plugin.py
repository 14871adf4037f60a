"""The pytest plugin: options in --help, header with the seed, markers, usage errors."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestAssertRewriteWarning")


def test_help_lists_the_option_group(pytester):
    result = pytester.runpytest("--help")
    out = result.stdout.str()
    assert "bnverify: check a batch-norm implementation" in out
    for opt in ("--bn-target", "--bn-kind", "--bn-convention", "--bn-tier", "--bn-suite", "--bn-device",
                "--bn-seed", "--bn-tracking-uri", "--bn-no-tracking", "--bn-timeout"):
        assert opt in out, opt


def test_markers_registered(pytester):
    out = pytester.runpytest("--markers").stdout.str()
    assert "bnverify_suite(name)" in out and "bnverify_tier(name)" in out


def test_header_shows_target_and_seed(pytester):
    result = pytester.runpytest("--pyargs", "bnverify.suites", "--bn-target", "reference", "--bn-seed", "42",
                                "--bn-suite", "forward", "--bn-max-examples", "2", "--bn-no-tracking",
                                "-k", "test_forward_contract")
    out = result.stdout.str()
    assert "bnverify 0.1.0: target reference" in out
    assert "hypothesis seed 42" in out
    assert "bnverify reproduce: bnverify check reference --seed 42" in out
    result.assert_outcomes(passed=2, deselected=result.parseoutcomes().get("deselected", 0))


def test_suites_without_target_is_a_usage_error(pytester, monkeypatch):
    monkeypatch.delenv("BNVERIFY_TARGET", raising=False)
    result = pytester.runpytest("--pyargs", "bnverify.suites")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "the suites need a target" in result.stderr.str()


def test_unknown_target_is_a_usage_error(pytester):
    result = pytester.runpytest("--pyargs", "bnverify.suites", "--bn-target", "nope_mod:X")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "cannot import module 'nope_mod'" in result.stderr.str()


def test_env_var_selects_the_target(pytester, monkeypatch):
    monkeypatch.setenv("BNVERIFY_TARGET", "torch")
    result = pytester.runpytest("--pyargs", "bnverify.suites", "--bn-suite", "forward", "--bn-max-examples", "2",
                                "--bn-no-tracking", "-k", "contract")
    assert "target torch" in result.stdout.str()
    assert result.ret == 0


def test_same_verdict_as_the_cli(pytester):
    """A failing target fails the same checks through pytest as through bnverify check."""
    pytester.makepyfile(badbn="""
        import torch
        class BadBN(torch.nn.BatchNorm1d):
            def forward(self, x):
                return super().forward(x) * 1.01
    """)
    result = pytester.runpytest("--pyargs", "bnverify.suites", "--bn-target", "badbn:BadBN", "--bn-suite", "forward",
                                "--bn-max-examples", "3", "--bn-no-tracking", "-k", "forward_train and rank2")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert "training-mode output differs from the float64 reference" in result.stdout.str()


def test_a_failed_check_shows_bnverifys_report_not_its_internals(pytester):
    """pytest prints the check's report and reproduce line; JUnit's message is its first line and likely cause."""
    import xml.etree.ElementTree as ET
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    pytester.syspathinsert(str(repo))
    xml = pytester.path / "j.xml"
    result = pytester.runpytest("--pyargs", "bnverify.suites", "--bn-no-tracking", "--bn-seed", "3",
                                "--bn-target", "tests.gallery.buggy_modules:UnbiasedVarianceBatchNorm",
                                "--bn-suite", "forward", "--bn-max-examples", "5", "-k", "rank2-float32",
                                f"--junitxml={xml}")
    out = result.stdout.str()
    assert "likely cause: the output matches normalisation by the unbiased (m-1) variance" in out
    assert "reproduce: bnverify check tests.gallery.buggy_modules:UnbiasedVarianceBatchNorm --suite forward" in out
    assert "BNTarget(" not in out and "def test_forward_train" not in out  # no reprs, no harness source
    message = ET.parse(xml).getroot().find(".//failure").get("message")
    assert message.startswith("training-mode output differs") and "| likely cause:" in message


def test_the_table_shows_the_ratio_of_the_reported_example():
    from bnverify.plugin import _reported_ratio

    assert _reported_ratio("dx: |error| 2 = 5.33 x tolerance 0.1\n  dgamma ... = 1.2e+03 x tolerance") == 1200.0
    assert _reported_ratio("got nan, |error| nan = inf x tolerance 2e-06") == float("inf")
    assert _reported_ratio("no ratio here") is None
