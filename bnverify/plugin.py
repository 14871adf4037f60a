"""The pytest plugin (entry point ``pytest11: bnverify``): options, target loading, results, summary.

Run the suites against a target::

    pytest --pyargs bnverify.suites --bn-target mypkg.bn:MyBatchNorm

The plugin is inert unless a target is given (``--bn-target`` or
``$BNVERIFY_TARGET``) or suite items are collected; then it loads the
target once, prints it in the header with the hypothesis seed, filters the
suites by ``--bn-suite``/``--bn-tier``, collects one ``CheckResult`` per
check (from ``user_properties``, which pytest-xdist carries back to the
controller), prints a summary table and, on the controller only, logs the
invocation to MLflow.
"""

from __future__ import annotations

import os
import platform
import random
import re
import time
from pathlib import Path
from typing import Any

import pytest

from bnverify.results import USER_PROPERTY_KEY, CheckResult, RunSummary

TIER_PROFILES = {"quick": "bnverify-ci", "full": "bnverify-full"}

SUMMARY_KEY = pytest.StashKey[RunSummary]()
TARGET_KEY = pytest.StashKey[Any]()
STATE_KEY = pytest.StashKey["_State"]()
MNIST_KEY = pytest.StashKey[Any]()
XFAILS_KEY = pytest.StashKey[Any]()
PREFLIGHT_KEY = pytest.StashKey[list[Any]]()
BUDGET_KEY = pytest.StashKey[Any]()
EXAMPLES_KEY = pytest.StashKey[tuple[int, int, "float | None"]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    from bnverify.options import add_pytest_options

    add_pytest_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "bnverify_suite(name): the bnverify suite a check belongs to")
    config.addinivalue_line("markers", "bnverify_tier(name): quick (the CI gate) or full; the family registry "
                            "(bnverify.families) decides, this marker documents it in the suite module")
    config.addinivalue_line("markers", "bnverify_examples(fraction): this check draws that fraction of the "
                            "profile's max_examples (at least 3)")
    spec = config.getoption("bn_target") or os.environ.get("BNVERIFY_TARGET")
    state = _State(spec=spec)
    config.stash[STATE_KEY] = state
    if not spec:
        return
    from bnverify.loading import load_target
    from bnverify.options import aspects
    from bnverify.target import TargetLoadError

    try:
        target = load_target(
            spec, kind=config.getoption("bn_kind"), convention=config.getoption("bn_convention"),
            reference=config.getoption("bn_reference"), call_timeout=config.getoption("bn_timeout"),
            aspects=aspects(config.getoption),
        )
    except TargetLoadError as exc:
        raise pytest.UsageError(f"bnverify: {exc}") from None
    config.stash[TARGET_KEY] = target
    xfails = config.getoption("bn_xfails")
    if xfails:
        from bnverify.gating import Xfails, XfailsError

        try:
            config.stash[XFAILS_KEY] = Xfails.read(xfails)
        except XfailsError as exc:
            raise pytest.UsageError(f"bnverify: --xfails: {exc}") from None
    _configure_convergence(config)
    import torch

    torch.set_num_threads(max(1, config.getoption("bn_threads")))
    preflight = target.family.preflight
    from bnverify import isolate

    isolate.configure(config, target)  # under --isolate only the worker calls the target (and runs the preflight)
    if isolate.requested(config) or isolate.is_worker(config):
        config.stash[PREFLIGHT_KEY] = []
    else:
        config.stash[PREFLIGHT_KEY] = preflight(target, config.getoption("bn_device")) if preflight else []
    _configure_hypothesis(config)
    _configure_budget(config, target)
    config.pluginmanager.register(_Reporter(config), "bnverify-reporter")


def _configure_budget(config: pytest.Config, target: Any) -> None:
    """The run's time budget (``bnverify.budget``), with the target's call time measured after a clean preflight."""
    from bnverify import budget

    total = config.getoption("bn_time_budget")
    if total is None:
        total = budget.DEFAULT_TIME_BUDGET_S[config.getoption("bn_tier")]
    if total < 0:
        raise pytest.UsageError(f"bnverify: --time-budget must be at least 0 (0: no limit), got {total:g}")
    explicit = config.getoption("bn_max_examples") is not None
    steps = config.stash.get(PREFLIGHT_KEY, [])
    call_s = None
    if total > 0 and not explicit and steps and not any(s.failed for s in steps):
        call_s = budget.measure_call_s(target, config.getoption("bn_device"))
    workers = int(getattr(config, "workerinput", {}).get("workercount", 1))
    config.stash[BUDGET_KEY] = budget.RunBudget(float(total), call_s, explicit, workers)


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """Fix the hypothesis seed before hypothesis's own ``pytest_configure`` reads it."""
    if (config.getoption("bn_target") or os.environ.get("BNVERIFY_TARGET")) is None:
        return
    from bnverify.options import DEFAULT_SEED

    seed = config.getoption("bn_seed")
    given = config.getoption("hypothesis_seed", default=None)
    if given is not None:
        seed = int(given)
    if seed is None:
        seed = DEFAULT_SEED
    elif seed == "random":
        seed = random.SystemRandom().randrange(2**31)
    config.option.bn_seed = seed
    config.option.hypothesis_seed = str(seed)
    from bnverify import isolate

    isolate.configure_cmdline(config)


def _configure_hypothesis(config: pytest.Config) -> None:
    from hypothesis import HealthCheck, settings

    tier = config.getoption("bn_tier")
    suppress = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large,
                HealthCheck.filter_too_much]
    # Every profile descends from hypothesis's own "default", never from whatever profile is loaded now:
    # an earlier in-process run (``bnverify.runner``) may have left one loaded without the shrink phase,
    # and a later run would inherit it (and stop at its first failure instead of reporting each).
    common: dict[str, Any] = dict(parent=settings.get_profile("default"), deadline=None, database=None,
                                  print_blob=True, suppress_health_check=suppress)
    settings.register_profile("bnverify-dev", max_examples=10, **common)
    settings.register_profile("bnverify-ci", max_examples=50, **common)
    settings.register_profile("bnverify-full", max_examples=150, **common)
    if config.getoption("hypothesis_profile", default=None) is None:
        name = TIER_PROFILES[tier]
        n = config.getoption("bn_max_examples")
        no_shrink = config.getoption("bn_no_shrink")
        if n is not None or no_shrink:
            from hypothesis import Phase

            extra: dict[str, Any] = {}
            if n is not None:
                extra["max_examples"] = n
            if no_shrink:
                extra["phases"] = [Phase.explicit, Phase.reuse, Phase.generate, Phase.target]
            settings.register_profile("bnverify-custom", parent=settings.get_profile(name), **extra)
            name = "bnverify-custom"
        settings.load_profile(name)


def _configure_convergence(config: pytest.Config) -> None:
    """Validate the convergence options; read ``--bn-mnist`` now, so a bad path is a usage error."""
    for opt in ("bn_convergence_epochs", "bn_convergence_seeds"):
        n = config.getoption(opt)
        if n is not None and n < 1:
            raise pytest.UsageError(f"bnverify: --{opt.replace('_', '-')} must be at least 1, got {n}")
    path = config.getoption("bn_mnist")
    if path is None:
        return
    from bnverify.mnist import MnistError, load_idx_dir

    try:
        config.stash[MNIST_KEY] = load_idx_dir(path)
    except MnistError as exc:
        raise pytest.UsageError(f"bnverify: --bn-mnist: {exc}") from None


class _State:
    def __init__(self, spec: str | None) -> None:
        self.spec = spec
        self.shrink_left: float | None = None  # seconds of the run's shrink budget still unspent


def _suite_of(item: pytest.Item) -> str | None:
    m = item.get_closest_marker("bnverify_suite")
    return m.args[0] if m else None


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep the suites of the target's family that its tier and ``--bn-suite`` select (``bnverify.families``)."""
    from bnverify import families

    suite_items = [it for it in items if _suite_of(it) is not None]
    if not suite_items:
        return
    if TARGET_KEY not in config.stash:
        from bnverify.loading import known_names

        raise pytest.UsageError(
            "bnverify: the suites need a target: pass --bn-target MODULE:ATTR (or set $BNVERIFY_TARGET); "
            f"known names: {', '.join(known_names())}"
        )
    wanted = set(config.getoption("bn_suite") or [])
    unknown = wanted - set(families.all_suites())
    if unknown:
        raise pytest.UsageError(
            f"bnverify: unknown suite(s) {', '.join(sorted(unknown))}; choose from {', '.join(families.all_suites())}")
    family = config.stash[TARGET_KEY].family
    tier = config.getoption("bn_tier")
    keep, drop = [], []
    for it in items:
        name = _suite_of(it)
        if name is None:
            keep.append(it)
            continue
        suite = family.suite(name)
        if suite is None:  # another family's suite
            drop.append(it)
        elif wanted:
            (keep if name in wanted else drop).append(it)
        elif suite.opt_in or (tier == "quick" and suite.tier == "full"):
            drop.append(it)
        else:
            keep.append(it)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
    _apply_preflight(config, items)
    _apply_xfails(config, items)
    _apply_example_budgets(items)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Plan the time budget over the checks that will run: after ``-k``/``-m`` deselection, which
    pytest applies after this plugin's ``pytest_collection_modifyitems``."""
    _plan_time_budget(session.config, session.items)


def _apply_preflight(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Checks that depend on a call the preflight saw fail are not run, with that reason (``bnverify.preflight``)."""
    from bnverify.preflight import blocked_reason

    steps = config.stash.get(PREFLIGHT_KEY, [])
    if not any(s.failed for s in steps):
        return
    for it in items:
        suite = _suite_of(it)
        why = None if suite is None else blocked_reason(steps, suite)
        if why:
            it.add_marker(pytest.mark.skip(reason=why))


def _apply_xfails(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the checks listed in ``--xfails FILE`` as expected failures (``bnverify.gating``)."""
    xfails = config.stash.get(XFAILS_KEY, None)
    if xfails is None:
        return
    strict = bool(config.getoption("bn_strict_xfails"))
    for it in items:
        suite = _suite_of(it)
        if suite is None:
            continue
        entry = xfails.match(suite, it.name)
        if entry is not None:
            it.add_marker(pytest.mark.xfail(reason=f"known deviation ({entry.where}): {entry.reason}", strict=strict))


RUN_SHRINK_BUDGET_FACTOR = 2
"""All failing checks of a run share this many per-check shrink budgets (``--shrink-budget``).

Two: a passing quick run of a fast target takes about 10 s on 2 cores, and a failing run is then that
plus at most 10 s of shrinking, within 2x of the passing run (with 4, failing gallery runs took 2.6x)."""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    """Bound the time hypothesis spends shrinking a failure: per check, and for the whole run.

    A failing run then answers in the same order of time as a passing one: the first failing
    example is found as fast as a pass, and refining it to a minimal one stops at the budget
    (hypothesis then reports the smallest example found so far).  Hypothesis documents its
    ``MAX_SHRINKING_SECONDS`` as the knob for exactly this.
    """
    if _suite_of(item) is None or TARGET_KEY not in item.config.stash:
        yield
        return
    from hypothesis.internal.conjecture import engine

    state = item.config.stash[STATE_KEY]
    per_check = max(0.0, float(item.config.getoption("bn_shrink_budget")))
    if state.shrink_left is None:
        state.shrink_left = per_check * RUN_SHRINK_BUDGET_FACTOR
    saved = engine.MAX_SHRINKING_SECONDS
    engine.MAX_SHRINKING_SECONDS = min(per_check, max(0.0, state.shrink_left))  # type: ignore[assignment]
    run, tier = item.config.stash.get(BUDGET_KEY, None), item.stash.get(EXAMPLES_KEY, None)
    fn = getattr(item, "obj", None)
    saved_settings = getattr(fn, "_hypothesis_internal_use_settings", None)
    if run is not None and tier is not None and saved_settings is not None:
        from hypothesis import settings

        plan = run.plan(item.nodeid, *tier)
        fn._hypothesis_internal_use_settings = settings(saved_settings, max_examples=plan.examples)  # type: ignore[union-attr]
        run.start()
    t0 = time.perf_counter()
    try:
        outcome = yield
    finally:
        engine.MAX_SHRINKING_SECONDS = saved
        if run is not None and tier is not None and saved_settings is not None:
            fn._hypothesis_internal_use_settings = saved_settings  # type: ignore[union-attr]
            generated, shrinking = run.finish(item.nodeid)
            data = _item_data(item)
            data.setdefault("metrics", {})["examples"] = float(generated)
            details = data.setdefault("details", {})
            details["examples"] = generated
            if shrinking:
                details["shrink_calls"] = shrinking
            if plan.flag:
                details["examples_of_tier"] = tier[0]
                details["reproduce_flags"] = plan.flag
    if outcome.excinfo is not None:  # it failed (and shrank): charge its time to the run's budget
        state.shrink_left -= time.perf_counter() - t0


def _apply_example_budgets(items: list[pytest.Item]) -> None:
    """Give each hypothesis check its share of the *current* profile's examples.

    A ``@settings(...)`` decorator would freeze the profile of the first run that imported the
    suite module; setting the attribute hypothesis reads at call time keeps every run (and every
    in-process run of ``bnverify.runner``) on its own profile, as array-api-tests does.
    """
    from hypothesis import settings

    current = settings.default
    assert current is not None  # a profile is always loaded once hypothesis is imported
    for it in items:
        fn = getattr(it, "obj", None)
        if fn is None or _suite_of(it) is None or not hasattr(fn, "_hypothesis_internal_use_settings"):
            continue
        mark = it.get_closest_marker("bnverify_examples")
        frac = float(mark.args[0]) if mark else 1.0
        n = max(3, int(current.max_examples * frac)) if mark else current.max_examples
        fn._hypothesis_internal_use_settings = settings(current, max_examples=n)


def _plan_time_budget(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Each hypothesis check's tier count and weight for the time budget; count the examples each runs."""
    from hypothesis import settings

    from bnverify import budget

    run = config.stash.get(BUDGET_KEY, None)
    current = settings.default
    if run is None or current is None:
        return
    for it in items:
        fn = getattr(it, "obj", None)
        if fn is None or _suite_of(it) is None or not hasattr(fn, "_hypothesis_internal_use_settings"):
            continue
        mark = it.get_closest_marker("bnverify_examples")
        frac = float(mark.args[0]) if mark else None
        it.stash[EXAMPLES_KEY] = (fn._hypothesis_internal_use_settings.max_examples, current.max_examples, frac)
        run.weights[it.nodeid] = frac if frac is not None else 1.0
        budget.count_examples(fn)


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    target = config.stash.get(TARGET_KEY, None)
    if target is None:
        return None
    from hypothesis import settings

    import bnverify

    seed = config.getoption("bn_seed")
    suites = config.getoption("bn_suite") or ["all of tier " + config.getoption("bn_tier")]
    return [
        f"bnverify {bnverify.__version__}: target {target.spec} ({target.name}, kind {target.kind}, "
        f"convention {target.convention.name}), device {config.getoption('bn_device')}",
        f"bnverify suites: {', '.join(suites)}; hypothesis seed {seed}, profile "
        f"{settings.get_current_profile_name()} (max_examples={getattr(settings.default, 'max_examples', '?')})",
        f"bnverify reproduce: {_reproduce(target)} --seed {seed}",
        *_budget_header(config),
    ]


def _budget_header(config: pytest.Config) -> list[str]:
    run = config.stash.get(BUDGET_KEY, None)
    if run is None or run.total_s <= 0:
        return []
    if run.explicit:
        return ["bnverify time budget: off (--max-examples fixes the examples per check)"]
    call = f"; median training-forward call {run.call_s * 1e3:.3g} ms" if run.call_s is not None else ""
    return [f"bnverify time budget: {run.total_s:g} s{call} (examples per check adapt to stay within it)"]


# --------------------------------------------------------------------------- fixtures

class CheckRecorder:
    """What a check measured: its worst error/tolerance ratio, metrics, and its failure message."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def observe(self, ratio: float, max_abs_err: float | None = None) -> None:
        cur = self.data.get("worst_ratio")
        if cur is None or ratio > cur:
            self.data["worst_ratio"] = float(ratio)
            if max_abs_err is not None:
                self.data["max_abs_err"] = float(max_abs_err)

    def not_a_ratio(self) -> None:
        """The check fails on a verdict that is not an error/tolerance ratio (an exact count, a statistical
        test): no err/tol for it, whatever ratios the check observed before; its numbers go to ``metric``."""
        self.data.pop("worst_ratio", None)
        self.data.pop("max_abs_err", None)

    def metric(self, name: str, value: float) -> None:
        self.data.setdefault("metrics", {})[name] = float(value)

    def series(self, name: str, values: list[float]) -> None:
        self.data.setdefault("series", {})[name] = [float(v) for v in values]

    def detail(self, name: str, value: Any) -> None:
        self.data.setdefault("details", {})[name] = value

    def artifact(self, name: str, path: str | os.PathLike[str]) -> None:
        """A file to attach to the invocation's MLflow run as ``name`` (e.g. ``plots/convergence.png``).

        The file must outlive the check (write it under ``tmp_path_factory``); it is copied when the
        run is logged, and its path is listed in the check's details as ``artifacts``.
        """
        self.data.setdefault("artifacts", {})[name] = os.fspath(path)


@pytest.fixture(scope="session")
def bn_target(request: pytest.FixtureRequest) -> Any:
    """The loaded ``BNTarget`` under test."""
    target = request.config.stash.get(TARGET_KEY, None)
    if target is None:
        pytest.skip("no bnverify target configured")
    return target


@pytest.fixture(scope="session")
def bn_device(request: pytest.FixtureRequest) -> str:
    return str(request.config.getoption("bn_device"))


@pytest.fixture(scope="session")
def bn_mnist(request: pytest.FixtureRequest) -> Any:
    """The convergence suites' data (a ``bnverify.mnist.Split``), read once per session.

    Full MNIST from ``--bn-mnist`` (read when the options were validated), else the embedded digits.
    """
    split = request.config.stash.get(MNIST_KEY, None)
    if split is None:
        from bnverify import mnist

        split = mnist.load(None)
    return split


@pytest.fixture
def bn_check(request: pytest.FixtureRequest) -> CheckRecorder:
    """Records a check's measurements on the item, for the summary and for MLflow."""
    data = _item_data(request.node)
    return CheckRecorder(data)


def _item_data(item: pytest.Item) -> dict[str, Any]:
    for key, value in item.user_properties:
        if key == USER_PROPERTY_KEY and isinstance(value, dict):
            return value
    data: dict[str, Any] = {}
    item.user_properties.append((USER_PROPERTY_KEY, data))
    return data


def pytest_runtest_setup(item: pytest.Item) -> None:
    suite = _suite_of(item)
    if suite is not None:
        data = _item_data(item)
        data["suite"] = suite
        data["check"] = item.originalname if isinstance(item, pytest.Function) else item.name


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    outcome = yield
    report = outcome.get_result()
    suite = _suite_of(item)
    if suite is None:
        return
    data = _item_data(item)
    if "suite" not in data:  # skipped by a mark before pytest_runtest_setup ran (preflight, --xfails)
        data["suite"] = suite
        data["check"] = item.originalname if isinstance(item, pytest.Function) else item.name
    if call.excinfo is not None and report.outcome in ("failed",) and "message" not in data:
        data["message"] = _message_of(call.excinfo.value)
    elif hasattr(report, "wasxfail") and call.excinfo is not None and "message" not in data:
        data["message"] = f"{report.wasxfail}\n{_message_of(call.excinfo.value)}".strip()
    elif report.skipped and "message" not in data and call.excinfo is not None:
        data["message"] = str(getattr(call.excinfo.value, "msg", call.excinfo.value))
    if report.failed and data.get("message"):  # the table shows the ratio of the example the detail reports
        reported = _reported_ratio(str(data["message"]))
        if reported is not None:
            data["worst_ratio"] = reported
    if report.failed and call.excinfo is not None and _is_verdict(call.excinfo.value) and data.get("message"):
        path, lineno, _ = item.location
        reproduce = f"{_reproduce(item.config.stash[TARGET_KEY])} --suite {suite} --seed {item.config.getoption('bn_seed')}"
        reproduce += "".join(f" {f}" for f in [data.get("details", {}).get("reproduce_flags")] if f)
        report.longrepr = _CheckRepr(f"{data['message']}\nreproduce: {reproduce}", (path, (lineno or 0) + 1))
    target = item.config.stash.get(TARGET_KEY, None)
    if target is not None and call.when == "call":  # JUnit reads them from the teardown report, so on the item
        from bnverify.gating import junit_properties

        item.user_properties[:] = [(k, v) for k, v in item.user_properties if not str(k).startswith("bnverify.")]
        item.user_properties += junit_properties(data, target, _reproduce(target))
    report.user_properties = list(item.user_properties)


_RATIO_IN_REPORT = re.compile(r"= ([0-9.]+(?:e[+-]?[0-9]+)?|inf) x tolerance")


def _reported_ratio(message: str) -> float | None:
    """The largest ``= R x tolerance`` of a failure report: the worst ratio of the example it reports."""
    found = [float(m) for m in _RATIO_IN_REPORT.findall(message)]
    return max(found) if found else None


class _CheckRepr:
    """A failed check as pytest shows it: bnverify's report, not its internals (``--tb`` styles alike).

    JUnit's failure ``message`` comes from ``reprcrash.message``: the report's first line and its
    likely cause, where there is one.
    """

    def __init__(self, text: str, where: tuple[str, int]) -> None:
        from _pytest._code.code import ReprFileLocation

        self.text = text
        lines = text.strip().splitlines()
        cause = next((ln.strip() for ln in lines if ln.strip().startswith("likely cause:")), "")
        first = lines[0] if lines else ""
        self.reprcrash = ReprFileLocation(where[0], where[1], first + (f" | {cause}" if cause else ""))

    def toterminal(self, tw: Any) -> None:
        for line in self.text.splitlines():
            tw.line(line)

    def __str__(self) -> str:
        return self.text


def _group(exc: BaseException) -> tuple[BaseException, ...]:
    """The members of an exception group (``BaseExceptionGroup``, or the ``exceptiongroup`` backport that
    hypothesis raises before Python 3.11), else ``()``."""
    inner = getattr(exc, "exceptions", None)
    return tuple(inner) if isinstance(inner, (list, tuple)) else ()


def _is_verdict(exc: BaseException) -> bool:
    """A check's verdict (CheckFailure, TargetError), or a group of them (hypothesis's multiple failures)."""
    inner = _group(exc)
    if inner:
        return all(_is_verdict(e) for e in inner)
    return isinstance(exc, AssertionError) and type(exc).__module__.startswith("bnverify")


def _message_of(exc: BaseException) -> str:
    """A check's failure text.  A group (hypothesis's "found N distinct failures", a ``BaseExceptionGroup``)
    shows every distinct failure with its own report (values, ratio, likely cause), numbered."""
    inner = _group(exc)
    if not inner:
        return str(exc).strip()
    parts = [_message_of(e) or type(e).__name__ for e in inner]
    lines = [f"{len(parts)} distinct failures, each with its own example (hypothesis reports them together):"]
    for i, part in enumerate(parts, 1):
        first, *rest = part.splitlines()
        lines.append(f"failure {i} of {len(parts)}: {first}")
        lines += [f"  {ln}" for ln in rest]
    return "\n".join(lines)


# --------------------------------------------------------------------------- results and summary

class _Reporter:
    """Collects results on the controller; prints the table; writes the report and the MLflow run."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.results: dict[str, CheckResult] = {}
        self.artifacts: dict[str, Path] = {}
        self.t0 = time.perf_counter()

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        """Say what runs, with the seed, before anything else; open the tracking store early (controller only)."""
        config = self.config
        if hasattr(config, "workerinput"):
            return
        tr = config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None and config.getoption("no_header", default=False):  # the CLI: no pytest header
            target = config.stash[TARGET_KEY]
            tr.write_line(f"bnverify: checking {target.spec} ({target.family.title}, kind {target.kind}, convention "
                          f"{target.convention.name}), seed {config.getoption('bn_seed')}; reproduce: "
                          f"{_reproduce(target)} --seed {config.getoption('bn_seed')}")
        if config.getoption("bn_no_tracking") or os.environ.get("BNVERIFY_TRACKING_WARMUP") != "1":
            return
        # The store warm-up worker (bnverify.tracking.warmup) is opt-in for now: on a short run
        # (a target that fails its preflight in a second) the final write waited ~45 s for it,
        # against ~2 s written in-process, so by default the run writes in-process.
        from bnverify import tracking

        tracking.prepare(config.getoption("bn_tracking_uri"))

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        """A failed preflight step fails the run, though the checks it blocked were skipped, not failed."""
        if hasattr(self.config, "workerinput"):
            return
        if any(s.failed for s in self.config.stash.get(PREFLIGHT_KEY, [])) and session.exitstatus in (
                pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Take the check's record off the report (JUnit keeps only the flat ``bnverify.*`` properties)."""
        data = None
        for key, value in getattr(report, "user_properties", []) or []:
            if key == USER_PROPERTY_KEY:
                data = value
        if data is not None and not hasattr(self.config, "workerinput"):
            report.user_properties = [(k, v) for k, v in report.user_properties if k != USER_PROPERTY_KEY]
        if not data or "suite" not in data:
            return
        res = self.results.get(report.nodeid)
        if res is None:
            res = CheckResult(nodeid=report.nodeid, suite=data["suite"], check=_check_name(report.nodeid, data),
                              outcome="passed")
            self.results[report.nodeid] = res
        if report.when == "setup":
            if report.skipped:
                res.outcome = "skipped"
                res.message = _skip_reason(report)
            elif report.failed:
                res.outcome = "error"
                res.message = data.get("message") or _short(report.longreprtext)
        elif report.when == "call":
            res.duration_s = report.duration
            if hasattr(report, "wasxfail"):
                res.outcome = "xfailed" if report.skipped else "xpassed"
                res.message = data.get("message") or str(report.wasxfail)
            elif report.skipped:
                res.outcome = "skipped"
                res.message = _skip_reason(report)
            else:
                res.outcome = report.outcome
                if report.failed:
                    res.message = data.get("message") or _short(report.longreprtext)
        elif report.when == "teardown" and report.failed and res.outcome == "passed":
            res.outcome = "error"
            res.message = _short(report.longreprtext)
        res.worst_ratio = data.get("worst_ratio", res.worst_ratio)
        res.max_abs_err = data.get("max_abs_err", res.max_abs_err)
        res.metrics.update(data.get("metrics", {}))
        res.series.update(data.get("series", {}))
        res.details.update(data.get("details", {}))
        if data.get("artifacts"):
            res.details["artifacts"] = dict(data["artifacts"])
            self.artifacts.update({name: Path(p) for name, p in data["artifacts"].items()})

    def summary(self) -> RunSummary:
        import torch

        import bnverify

        config = self.config
        target = config.stash[TARGET_KEY]
        tags = {
            "target": target.spec, "target_name": target.name, "kind": target.kind, "family": target.family.name,
            "convention": target.convention.name, "tier": config.getoption("bn_tier"),
            "device": config.getoption("bn_device"), "bnverify_version": bnverify.__version__,
            "torch_version": torch.__version__, "python_version": platform.python_version(),
        }
        commit = _git_commit(target.source_file)
        if commit:
            tags["target_git_commit"] = commit
        params = {
            "target": target.spec, "kind": target.kind, "convention": target.convention.name,
            "tier": config.getoption("bn_tier"), "device": config.getoption("bn_device"),
            "seed": config.getoption("bn_seed"), "suites": ",".join(config.getoption("bn_suite") or ["all"]),
            "timeout_s": config.getoption("bn_timeout"),
            **_budget_params(config, self.results.values()),
        }
        results = dict(self.results)
        for step in config.stash.get(PREFLIGHT_KEY, []):
            if step.failed:
                nodeid = f"preflight::{step.name}"
                results[nodeid] = CheckResult(
                    nodeid=nodeid, suite="preflight", check=f"preflight[{step.name}]", outcome="failed",
                    message=f"{step.error}\n  the checks that need a working {step.name} were not run "
                            "(reported as skipped with this reason)")
        return RunSummary(
            target=target.spec, kind=target.kind, convention=target.convention.name,
            tier=config.getoption("bn_tier"), device=config.getoption("bn_device"),
            seed=config.getoption("bn_seed"), params=params, tags=tags,
            results=sorted(results.values(), key=lambda r: (r.suite != "preflight", r.suite, r.nodeid)),
            duration_s=time.perf_counter() - self.t0, reproduce=_reproduce(target),
        )

    def pytest_terminal_summary(self, terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
        if hasattr(config, "workerinput"):
            return
        summary = self.summary()
        config.stash[SUMMARY_KEY] = summary
        text = format_table(summary)
        terminalreporter.write_sep("=", "bnverify summary")
        for line in text.splitlines():
            terminalreporter.write_line(line)
        for r in summary.results:  # a check's own report (the convergence table), when it leaves one
            if isinstance(r.details.get("console"), str):
                terminalreporter.write_sep("-", f"{r.suite}/{r.check}")
                for line in r.details["console"].splitlines():
                    terminalreporter.write_line(line)
        unmatched = self._unmatched_xfails()
        for u in unmatched:
            terminalreporter.write_line(f"bnverify: warning: known-deviation entry {u} matches no check of this run")
        outcome = self._finish(summary, text, terminalreporter)
        for name, p in sorted(self.artifacts.items()):  # where each artifact lives now: the store, else the spool
            where = outcome.artifact_location(name) if outcome is not None else None
            terminalreporter.write_line(f"bnverify: {name}: {where or f'{p} (not logged: a temporary file)'}")
        self._markdown(summary, outcome, unmatched, terminalreporter)

    def _unmatched_xfails(self) -> list[str]:
        xfails = self.config.stash.get(XFAILS_KEY, None)
        return [] if xfails is None else [f"{e.pattern!r} ({e.where})" for e in xfails.unmatched()]

    def _markdown(self, summary: RunSummary, outcome: Any, unmatched: list[str], tr: Any) -> None:
        """``--summary PATH`` and ``$GITHUB_STEP_SUMMARY``: the run as markdown, with the fingerprint."""
        from bnverify import gating

        path = self.config.getoption("bn_summary")
        if not path and not os.environ.get(gating.STEP_SUMMARY_ENV):
            return
        target = self.config.stash[TARGET_KEY]
        fingerprint = None
        from bnverify import isolate

        if isolate.requested(self.config):  # the controller never calls the target
            fingerprint = "not measured under --isolate (run `bnverify fingerprint` for it)"
        elif target.family.fingerprint is not None and not target.watchdog.hung:
            try:
                fingerprint = target.family.fingerprint(target, self.config.getoption("bn_device"), False)
            except Exception as exc:  # noqa: BLE001 - the summary reports what it could measure
                fingerprint = f"could not be measured: {type(exc).__name__}: {exc}"
        link = None
        if outcome is not None and getattr(outcome, "run_id", None):
            from bnverify.tracking import resolve_tracking_uri

            uri = resolve_tracking_uri(self.config.getoption("bn_tracking_uri"))
            link = f"run `{outcome.run_id}` in `{_redacted(uri)}`"
        elif outcome is not None and str(getattr(outcome, "message", "")):
            link = outcome.message
        text = gating.markdown_summary(summary, fingerprint=fingerprint, run_link=link,
                                       unmatched=[u for u in unmatched])
        for where in gating.write_summary(text, path):
            tr.write_line(f"bnverify: summary written to {where}")

    def _finish(self, summary: RunSummary, table: str, tr: Any) -> Any:
        config = self.config
        path = config.getoption("bn_report")
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(summary.to_json())
        if config.getoption("bn_no_tracking"):
            return None
        artifacts: dict[str, Any] = {**self.artifacts, "report.txt": table}
        junit = config.getoption("xmlpath", default=None)
        if junit and Path(junit).exists():
            artifacts["junit.xml"] = Path(junit)
        try:
            from bnverify import tracking
        except ImportError as exc:  # pragma: no cover - tracking ships with the package
            tr.write_line(f"bnverify: tracking unavailable ({exc}); results not logged")
            return None
        outcome = tracking.log_invocation(
            summary, tracking_uri=config.getoption("bn_tracking_uri"), artifacts=artifacts,
        )
        if outcome.message:
            tr.write_line(f"bnverify: {outcome.message}")
        return outcome


def _budget_params(config: pytest.Config, results: Any) -> dict[str, Any]:
    """The time budget, the measured call time and the examples each check ran, as run parameters."""
    from bnverify import budget

    run = config.stash.get(BUDGET_KEY, None)
    if run is None:
        return {}
    examples = [r.details["examples"] for r in results if isinstance(r.details.get("examples"), int)]
    reduced = [r for r in results if r.details.get("reproduce_flags")]
    out: dict[str, Any] = {"time_budget_s": run.total_s if not run.explicit else "off (--max-examples given)"}
    if run.call_s is not None:
        out["call_time_ms"] = round(run.call_s * 1e3, 3)
    if examples:
        out["examples_per_check"] = f"{min(examples)}-{max(examples)}" if min(examples) != max(examples) else min(examples)
    if reduced:
        ran = sorted({int(r.details["examples"]) for r in reduced if isinstance(r.details.get("examples"), int)})
        tier = sorted({int(r.details.get("examples_of_tier", 0)) for r in reduced})
        call = f"median call {run.call_s * 1e3:.3g} ms" if run.call_s is not None else "timed on its first checks"
        elapsed = time.perf_counter() - run.t0
        over = (f"; the run took {elapsed:.0f} s: the floor of {budget.MIN_EXAMPLES} examples per check needs more "
                "than the budget for this target" if elapsed > run.total_s else "")
        out["time_budget_note"] = (
            f"slow target ({call}): {len(reduced)} checks ran {_span(ran)} examples instead of the tier's "
            f"{_span(tier)} to stay within {run.total_s:g} s{over}; each check's count is in the report and its "
            "reproduce line; pass --time-budget to change the budget, or --max-examples to fix the count")
    return out


def _span(values: list[int]) -> str:
    return "?" if not values else str(values[0]) if values[0] == values[-1] else f"{values[0]}-{values[-1]}"


def _redacted(uri: str) -> str:
    """A tracking URI without credentials (``user:password@`` removed)."""
    import re

    return re.sub(r"//[^/@]*@", "//", uri)


def _check_name(nodeid: str, data: dict[str, Any]) -> str:
    name = nodeid.split("::")[-1]
    return name


def _skip_reason(report: pytest.TestReport) -> str:
    lr = report.longrepr
    if isinstance(lr, tuple) and len(lr) == 3:
        return str(lr[2]).removeprefix("Skipped: ")
    return _short(str(lr))


def _short(text: str, n: int = 2000) -> str:
    return text.strip()[:n]


def _git_commit(path: str | None) -> str | None:
    if not path:
        return None
    import subprocess

    try:
        out = subprocess.run(
            ["git", "-C", str(Path(path).parent), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _reproduce(target: Any) -> str:
    """``bnverify check SPEC [--kind K] [--convention C] [--reference R]``: reloads the target as loaded here."""
    return " ".join(["bnverify", "check", target.spec, *target.reproduce_flags()])


def _ratio_text(ratio: float | None) -> str:
    if ratio is None:
        return ""
    if ratio == float("inf"):
        return "inf"
    return f"{ratio:.3g}" if ratio < 1e6 else f"{ratio:.2e}"


_GROUP_MEMBER = re.compile(r"failure \d+ of \d+: ")


def _cut(text: str, n: int) -> str:
    """``text`` in at most ``n`` characters, cut after a word with an ellipsis (never inside a number:
    ``|z| = 843.0`` cut to ``|z| = 84`` misstates it)."""
    if len(text) <= n:
        return text
    head = text[: n - 1]
    return (head if text[n - 1] == " " or " " not in head else head.rsplit(" ", 1)[0]) + "…"


def format_table(summary: RunSummary) -> str:
    """The summary table printed at the end of a run, and saved as ``report.txt``."""
    from bnverify.tables import table

    rows = []
    for r in summary.results:
        note = _cut(r.message.strip().splitlines()[0], 110) if r.message.strip() and r.outcome != "passed" else ""
        rows.append((r.suite, r.check, r.outcome.upper() if r.failed else r.outcome, _ratio_text(r.worst_ratio),
                     f"{r.duration_s:.2f}s", note))
    lines = [table(rows, ("suite", "check", "result", "err/tol", "time", "note"))] if rows else []
    c = summary.counts
    lines.append("")
    lines.append(
        f"{summary.target}: {summary.verdict.upper()} - {c['passed']} passed, {c['failed'] + c['error']} failed, "
        f"{c['skipped']} skipped" + (f", {c['xfailed']} xfailed" if c["xfailed"] else "")
        + f" in {summary.duration_s:.1f}s (seed {summary.seed})"
    )
    if summary.params.get("time_budget_note"):
        lines.append(f"time budget: {summary.params['time_budget_note']}")
    failed = [r for r in summary.results if r.failed]
    if failed:
        lines.append("")
        reproduce = summary.reproduce or f"bnverify check {summary.target}"
        for r in failed:
            lines.append(f"FAILED {r.suite}/{r.check}")
            groups = sum(1 for ln in r.message.splitlines() if _GROUP_MEMBER.match(ln))
            for ln in r.message.strip().splitlines()[:14 * max(1, groups) + (1 if groups else 0)]:
                lines.append("    " + ln)
            where = "" if r.suite == "preflight" else f" --suite {r.suite}"
            flags = "".join(f" {f}" for f in [r.details.get("reproduce_flags")] if f)
            lines.append(f"    reproduce: {reproduce}{where} --seed {summary.seed}{flags}")
    return "\n".join(lines)
