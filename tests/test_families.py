"""The family registry: declared once, read everywhere; a new family needs no edit outside its own files."""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from bnverify import families, options
from bnverify.cli import build_parser
from bnverify.loading import load_target
from bnverify.target import Target, TargetLoadError

REPO = Path(__file__).resolve().parents[1]


def _suite_markers(mark: str = "bnverify_suite") -> dict[str, str]:
    """``module -> argument`` of the ``mark(...)`` marks of ``suites/test_*.py``."""
    found: dict[str, str] = {}
    for path in (REPO / "suites").glob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == mark
                    and node.args and isinstance(node.args[0], ast.Constant)):
                found[path.name] = node.args[0].value
    return found


def test_registry_is_consistent_with_the_suite_modules():
    kinds = families.all_kinds()
    assert len(kinds) == len(set(kinds)), "a kind belongs to one family"
    suites = families.all_suites()
    assert len(suites) == len(set(suites)), "a suite belongs to one family"
    markers = _suite_markers()
    assert set(markers.values()) == set(suites), f"suites without a module or modules without an entry: {markers}"
    tiers = _suite_markers("bnverify_tier")  # documentation in the module; the registry decides
    for module, suite in markers.items():
        fam = families.family_of_suite(suite)
        assert fam is not None and tiers.get(module, fam.suite(suite).tier) == fam.suite(suite).tier, module
    for fam in families.FAMILIES:
        assert fam.default_convention(fam.kinds[0].name) in fam.conventions
        for kind, conv in fam.default_conventions.items():
            assert conv in fam.conventions and any(k.name == kind for k in fam.kinds)
        for s in fam.suites:
            assert s.tier in families.TIERS


def test_cli_and_plugin_options_come_from_one_table(pytester):
    check = build_parser()._subparsers._group_actions[0].choices["check"]  # type: ignore[union-attr]
    cli_flags = {s for a in check._actions for s in a.option_strings}
    help_text = pytester.runpytest("--help").stdout.str()
    for o in options.OPTIONS:
        assert ("--" + o.name in cli_flags) == o.cli, o.name
        assert o.pytest_flag in help_text, o.pytest_flag
    kind = next(a for a in check._actions if "--kind" in a.option_strings)
    assert list(kind.choices) == families.all_kinds()
    conv = next(a for a in check._actions if "--convention" in a.option_strings)
    assert list(conv.choices) == families.all_conventions()


def test_every_option_is_documented_in_the_readme():
    readme = (REPO / "README.md").read_text()
    missing = [o.name for o in options.OPTIONS if f"`--{o.name}" not in readme]
    assert not missing, f"options missing from README's options table: {missing}"


def test_cli_arguments_translate_to_the_same_pytest_options():
    from bnverify.cli import pytest_args

    args = build_parser().parse_args(["check", "mod:X", "--kind", "torch-dropout", "--convention", "direct",
                                      "--suite", "dropout", "--no-shrink", "--seed", "3"])
    out = pytest_args(args)
    for pair in (["--bn-kind", "torch-dropout"], ["--bn-convention", "direct"], ["--bn-suite", "dropout"],
                 ["--bn-seed", "3"], ["--bn-tier", "quick"], ["--bn-timeout", "60.0"]):
        i = out.index(pair[0])
        assert out[i:i + 2] == pair
    assert "--bn-no-shrink" in out and "--bn-no-tracking" not in out


def test_reproduce_flags_name_only_what_was_not_detected():
    assert load_target("torch").reproduce_flags() == []
    assert load_target("tests.gallery.correct:Cs231nBatchNorm", kind="numpy-cs231n").reproduce_flags() == []
    t = load_target("torch.nn:Dropout", kind="torch-dropout", convention="direct")
    assert t.reproduce_flags() == ["--kind", "torch-dropout", "--convention", "direct"]
    assert load_target("torch", convention="keras").reproduce_flags() == ["--convention", "keras"]


def test_conventions_and_references_are_checked_against_the_family():
    with pytest.raises(TargetLoadError, match="does not apply to batch norm targets.*dropout convention"):
        load_target("torch", convention="inverted")
    with pytest.raises(TargetLoadError, match="--reference does not apply to batch norm targets"):
        load_target("torch", reference="adam")
    # the batch-norm names mean what those frameworks do for dropout: inverted scaling
    assert load_target("torch.nn:Dropout", kind="torch-dropout", convention="keras").convention.name == "inverted"


@dataclass
class _ToyTarget(Target):
    pass


def test_a_new_family_is_one_registry_entry(monkeypatch, pytester):
    """A toy family (kind, convention, reference, suite) runs through the unchanged loader, options and plugin."""
    toy = families.Family(
        name="toy", title="toy", kinds=(families.Kind("toy-fn", "a function named toy_*",
                                                      lambda o: getattr(o, "__name__", "").startswith("toy_")),),
        suites=(families.Suite("toy-suite", "quick"),),
        conventions={"plain": type("C", (), {"name": "plain"})()},
        make_target=lambda obj, kind, spec, name, conv: _ToyTarget(name=name, kind=kind, obj=obj, spec=spec,
                                                                    convention=conv),
        references=("double", "triple"),
        infer_reference_from=lambda obj, kind: "double" if "double" in obj.__name__ else None,
    )
    monkeypatch.setattr(families, "FAMILIES", (*families.FAMILIES, toy))
    pytester.makepyfile(toymod="def toy_double(x):\n    return 2 * x\n\ndef toy_other(x):\n    return 3 * x\n")
    pytester.makepyfile(test_toy_suite="""
import pytest
pytestmark = pytest.mark.bnverify_suite("toy-suite")

def test_doubles(bn_target, bn_check):
    factor = {"double": 2, "triple": 3}[bn_target.reference]
    got = bn_target.call("call", lambda: bn_target.obj(21))
    bn_check.observe(abs(got - factor * 21))
    assert got == factor * 21, f"expected {factor * 21}, got {got}"
""")
    monkeypatch.syspath_prepend(str(pytester.path))
    target = load_target("toymod:toy_double")
    assert (target.kind, target.reference, target.family.name) == ("toy-fn", "double", "toy")
    with pytest.raises(TargetLoadError, match="pass --reference, one of: double, triple"):
        load_target("toymod:toy_other")
    res = pytester.runpytest("--bn-target", "toymod:toy_other", "--bn-reference", "triple", "--bn-no-tracking",
                             "-p", "no:cacheprovider", "test_toy_suite.py")
    res.assert_outcomes(passed=1)
    assert "bnverify check toymod:toy_other --reference triple" in res.stdout.str()
    res = pytester.runpytest("--bn-target", "toymod:toy_other", "--bn-reference", "double", "--bn-no-tracking",
                             "-p", "no:cacheprovider", "test_toy_suite.py")
    res.assert_outcomes(failed=1)
    # a batch-norm target never runs the toy family's suite, and vice versa
    res = pytester.runpytest("--bn-target", "torch", "--bn-no-tracking", "-p", "no:cacheprovider",
                             "test_toy_suite.py")
    assert "1 deselected" in res.stdout.str()


def test_help_is_fast_and_light():
    """``--help`` declares every family's choices without importing torch."""
    code = "import sys, bnverify.options; assert 'torch' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_kind_named_for_an_object_of_another_kind_is_a_usage_error():
    with pytest.raises(TargetLoadError, match="not an nn.Module subclass"):
        load_target("torch.nn.functional:batch_norm", kind="torch-dropout")


def test_every_package_is_installed():
    """A non-editable install takes only the packages pyproject.toml lists: every bnverify/ package is listed."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"bnverify." + p.parent.relative_to(REPO / "bnverify").as_posix().replace("/", ".")
             for p in (REPO / "bnverify").glob("*/__init__.py")}
    assert found <= listed, f"packages missing from pyproject.toml: {sorted(found - listed)}"
