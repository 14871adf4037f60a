"""``bnverify``: the command line, a thin wrapper over the pytest plugin.

    bnverify check TARGET [--kind K] [--convention C] [--tier quick|full] [--suite NAME ...]
                          [--device cpu|cuda] [--mnist PATH] [--tracking-uri URI | --no-tracking]
                          [--junitxml PATH]

Exit codes: 0 every check passed, 1 at least one check failed, 2 usage or
configuration error (unknown target, import error, bad option).  A crash
inside the target is a failed check (1), not a usage error.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from bnverify.plugin import SUITES, TIERS

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 already; keep one clear line
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="bnverify", description="Verify a batch-norm implementation against float64 references.")
    from bnverify import __version__

    p.add_argument("--version", action="version", version=f"bnverify {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    c = sub.add_parser("check", help="run the check suites against a target",
                       description="Run the check suites against TARGET and report pass/fail per check.")
    c.add_argument("target", help="MODULE:ATTR, MODULE, or a built-in name: torch, reference")
    c.add_argument("--kind", choices=["torch-module", "torch-functional", "numpy-cs231n", "torch-dropout"],
                   help="target kind, when it cannot be detected")
    c.add_argument("--convention", choices=["torch", "keras", "flax", "cs231n", "inverted", "direct"],
                   help="framework convention of the target (default torch; cs231n for numpy-cs231n); "
                        "for --kind torch-dropout: inverted (default) or direct")
    c.add_argument("--tier", choices=TIERS, default="quick", help="quick (CI gate, default) or full")
    c.add_argument("--suite", action="append", choices=SUITES, metavar="NAME",
                   help=f"run only this suite (repeatable): {', '.join(SUITES)}")
    c.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    c.add_argument("--mnist", metavar="PATH",
                   help="full MNIST for the convergence suites: a folder with the four IDX files (gzipped or not), "
                        "or torchvision's MNIST root; default: the 5,000 embedded digits (never downloaded)")
    c.add_argument("--seed", type=int, help="hypothesis seed (default: random, printed)")
    c.add_argument("--max-examples", type=int, help="hypothesis examples per check")
    c.add_argument("--timeout", type=float, default=60.0, help="seconds a single target call may take")
    tr = c.add_mutually_exclusive_group()
    tr.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else local SQLite)")
    tr.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    c.add_argument("--junitxml", help="write a JUnit XML report to PATH")
    c.add_argument("--report", help="write the run summary as JSON to PATH")
    c.add_argument("-v", "--verbose", action="store_true", help="show pytest's full output for failures")
    c.set_defaults(func=cmd_check)
    f = sub.add_parser("fingerprint", help="which batch-norm conventions a target follows, measured by probing it",
                       description="Probe TARGET and print which conventions it follows (SPEC section 4): momentum "
                                   "meaning and default, running-variance estimator, eps default and placement, ...")
    f.add_argument("target", help="MODULE:ATTR, MODULE, or a built-in name: torch, reference")
    f.add_argument("--kind", choices=["torch-module", "torch-functional", "numpy-cs231n"],
                   help="target kind, when it cannot be detected")
    f.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    f.add_argument("--json", action="store_true", help="print JSON instead of a table")
    f.set_defaults(func=cmd_fingerprint)
    try:
        from bnverify import tracking_cli
    except ImportError:  # pragma: no cover - ships with the package
        tracking_cli = None  # type: ignore[assignment]
    if tracking_cli is not None:
        tracking_cli.add_commands(sub)
    return p


def pytest_args(args: argparse.Namespace) -> list[str]:
    """The pytest command line equivalent to ``bnverify check``."""
    out = ["--pyargs", "bnverify.suites", "--bn-target", args.target, "--bn-tier", args.tier,
           "--bn-device", args.device, "--bn-timeout", str(args.timeout),
           "-p", "no:cacheprovider", "-o", "addopts=", "-o", "filterwarnings=",
           "-W", "ignore::pytest.PytestAssertRewriteWarning", "--rootdir", os.getcwd()]
    for flag, value in (("--bn-kind", args.kind), ("--bn-convention", args.convention),
                        ("--bn-seed", args.seed), ("--bn-max-examples", args.max_examples),
                        ("--bn-tracking-uri", args.tracking_uri), ("--bn-report", args.report),
                        ("--bn-mnist", args.mnist),
                        ("--junitxml", args.junitxml)):
        if value is not None:
            out += [flag, str(value)]
    for s in args.suite or []:
        out += ["--bn-suite", s]
    if args.no_tracking:
        out.append("--bn-no-tracking")
    out += ["-q", "--tb=short"] if args.verbose else ["-q", "--tb=no", "--no-header"]
    return out


def cmd_check(args: argparse.Namespace) -> int:
    from bnverify.adapter import TargetLoadError
    from bnverify.loading import load_target

    try:  # fail fast, with one line, before pytest starts
        load_target(args.target, kind=args.kind, convention=args.convention)
    except TargetLoadError as exc:
        print(f"bnverify: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.mnist is not None:  # read once here; the plugin reuses what was read
        from bnverify.mnist import MnistError, load_idx_dir

        try:
            load_idx_dir(args.mnist)
        except MnistError as exc:
            print(f"bnverify: error: --mnist: {exc}", file=sys.stderr)
            return EXIT_USAGE
    import pytest

    from bnverify.runner import run_pytest

    code, summary = run_pytest(pytest_args(args))
    if code == pytest.ExitCode.USAGE_ERROR or code == pytest.ExitCode.INTERNAL_ERROR:
        return EXIT_USAGE
    if summary is None:
        return EXIT_USAGE if code not in (0, 1) else int(code)
    return EXIT_FAILED if summary.verdict == "failed" or code == pytest.ExitCode.TESTS_FAILED else EXIT_OK


def cmd_fingerprint(args: argparse.Namespace) -> int:
    from bnverify.adapter import TargetLoadError
    from bnverify.fingerprint import run

    try:
        print(run(args.target, kind=args.kind, device=args.device, as_json=args.json))
    except TargetLoadError as exc:
        print(f"bnverify: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
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
