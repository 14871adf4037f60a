"""``bnverify``: the command line, a thin wrapper over the pytest plugin.

    bnverify check TARGET [--kind K] [--convention C [--eps E] [--momentum M] [--momentum-meaning
                          new-weight|old-decay] [--running-var biased|unbiased]] [--reference R] [--tier quick|full]
                          [--suite NAME ...] [--device cpu|cuda] [--mnist PATH]
                          [--tracking-uri URI | --no-tracking] [--junitxml PATH]

The options of ``check`` are generated from ``bnverify.options.OPTIONS``, the same table the
plugin's ``--bn-`` options come from.

Exit codes: 0 every check passed, 1 at least one check failed, 2 usage or
configuration error (unknown target, import error, bad option).  A crash
inside the target is a failed check (1), not a usage error.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import NoReturn, Sequence

from bnverify import options

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse exits 2 already; keep one clear line
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="bnverify", description="Verify a batch-norm implementation against float64 references.")
    from bnverify import __version__

    p.add_argument("--version", action="version", version=f"bnverify {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    c = sub.add_parser("check", help="run the check suites against a target",
                       description="Run the check suites against TARGET and report pass/fail per check.")
    c.add_argument("target", help=options.TARGET_HELP)
    options.add_cli_options(c)
    c.add_argument("--junitxml", help="write a JUnit XML report to PATH")
    c.add_argument("-v", "--verbose", action="store_true", help="show pytest's full output for failures")
    c.set_defaults(func=cmd_check)
    f = sub.add_parser("fingerprint", help="which conventions a target follows, measured by probing it",
                       description="Probe TARGET and print which conventions it follows (SPEC section 4); for a "
                                   "batch norm: momentum meaning and default, running-variance estimator, eps "
                                   "default and placement, ...")
    f.add_argument("target", help=options.TARGET_HELP)
    options.add_cli_options(f, names=("kind", "reference", "device"))
    f.add_argument("--json", action="store_true", help="print JSON instead of a table")
    f.set_defaults(func=cmd_fingerprint)
    e = sub.add_parser("ci-example", help="print a GitHub Actions workflow that gates on bnverify",
                       description="Print a ready GitHub Actions workflow: the quick tier on every push and pull "
                                   "request, the full tier nightly, results to the MLflow server named by the "
                                   "MLFLOW_TRACKING_URI secret, known deviations from bnverify-xfails.txt.")
    e.add_argument("--target", default="mypkg.bn:MyBatchNorm", help="the target the workflow checks")
    e.add_argument("--flags", default="", help="further `bnverify check` flags, e.g. \"--kind numpy-cs231n\"")
    e.add_argument("--install", default="pip install bnverify", help="the step that installs bnverify and "
                   "the target's package")
    e.set_defaults(func=cmd_ci_example)
    try:
        from bnverify import tracking_cli
    except ImportError:  # pragma: no cover - ships with the package
        tracking_cli = None  # type: ignore[assignment]
    if tracking_cli is not None:
        tracking_cli.add_commands(sub)
    return p


def pytest_args(args: argparse.Namespace) -> list[str]:
    """The pytest command line equivalent to ``bnverify check``."""
    out = ["--pyargs", "bnverify.suites", "--bn-target", args.target, *options.pytest_args(args),
           "-p", "no:cacheprovider", "-o", "addopts=", "-o", "filterwarnings=",
           "-W", "ignore::pytest.PytestAssertRewriteWarning", "--rootdir", os.getcwd()]
    if args.junitxml is not None:
        out += ["--junitxml", args.junitxml]
    out += ["-q", "--tb=short"] if args.verbose else ["-q", "--tb=no", "--no-header"]
    return out


def cmd_check(args: argparse.Namespace) -> int:
    from bnverify.loading import load_target
    from bnverify.target import TargetLoadError

    try:  # fail fast, with one line, before pytest starts
        load_target(args.target, kind=args.bn_kind, convention=args.bn_convention, reference=args.bn_reference,
                    aspects=options.aspects(lambda dest: getattr(args, dest, None)))
    except TargetLoadError as exc:
        print(f"bnverify: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.bn_mnist is not None:  # read once here; the plugin reuses what was read
        from bnverify.mnist import MnistError, load_idx_dir

        try:
            load_idx_dir(args.bn_mnist)
        except MnistError as exc:
            print(f"bnverify: error: --mnist: {exc}", file=sys.stderr)
            return EXIT_USAGE
    import pytest

    from bnverify.runner import run_pytest

    # Nothing but the tracking store the user asked for lands in their directory: hypothesis's and
    # pytest-benchmark's working files go to a scratch folder that is removed afterwards.
    with tempfile.TemporaryDirectory(prefix="bnverify-") as scratch:
        os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(scratch, "hypothesis"))
        code, summary = run_pytest([*pytest_args(args), "--benchmark-storage",
                                    "file://" + os.path.join(scratch, "benchmarks")])
    if code == pytest.ExitCode.USAGE_ERROR or code == pytest.ExitCode.INTERNAL_ERROR:
        return EXIT_USAGE
    if summary is None:
        return EXIT_USAGE if code not in (0, 1) else int(code)
    return EXIT_FAILED if summary.verdict == "failed" or code == pytest.ExitCode.TESTS_FAILED else EXIT_OK


def cmd_fingerprint(args: argparse.Namespace) -> int:
    from bnverify.loading import load_target
    from bnverify.target import TargetLoadError

    try:
        target = load_target(args.target, kind=args.bn_kind, reference=args.bn_reference)
    except TargetLoadError as exc:
        print(f"bnverify: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    probe = target.family.fingerprint
    if probe is None:
        print(f"bnverify: error: no fingerprint for {target.family.title} targets (kind {target.kind})",
              file=sys.stderr)
        return EXIT_USAGE
    print(probe(target, args.bn_device, args.json))
    return EXIT_OK


def cmd_ci_example(args: argparse.Namespace) -> int:
    from bnverify.gating import ci_example

    print(ci_example(args.target, args.flags, args.install), end="")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
