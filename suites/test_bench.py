"""Benchmarks (full tier): the target's time, bandwidth and percent of roofline, beside torch's own batch norm.

For each operation -- training forward, backward, training step (forward + backward), eval
forward -- and each case of a small grid (``bnverify.bench.grid``; CPU: 64x64x32x32,
32x32x16x16 and 4096x256 in float32; with ``--device cuda`` also 256x64x56x56 in float16 and
float32), a check times three arms interleaved round by round (``bnverify.bench.timers``): the
target, torch's native
``torch.nn.BatchNorm1d/2d`` built with the same configuration, and a copy of the input (the
roofline, measured now on this device).  The cache is flushed before every timed call where
that is possible (``bnverify.bench.timers``: not a CPU cache too large to flush per call).  CPU
timings go through pytest-benchmark's ``benchmark.pedantic`` (a ``time.perf_counter`` loop when it
is disabled, e.g. under pytest-xdist or ``--benchmark-disable``); GPU timings through CUDA events
per call, cross-checked with ``triton.testing.do_bench`` when triton is importable.

Verdict: a bench check fails only when the target crashes (or hangs) or returns a wrong-shaped
output; times are measured, never asserted.  The last check, ``test_bench_report``, writes the
run's table (printed after the summary), ``plots/bench.png`` (bandwidth against size: target,
native, roofline) and ``bench/benchmark.json`` (every sample), and -- when
``$BNVERIFY_PERF_BASELINE`` names a previous run's JSON -- fails on a slowdown relative to
native beyond both runs' noise (``bnverify.bench.gate``).

Metrics per check (MLflow): ``median_ms``, ``iqr_ms``, ``ci95_half_ms``, ``GBps_minimal``,
``GBps_two_pass``, ``pct_roofline``, ``copy_GBps``, ``ratio_to_native``, the native's
``native_median_ms``, ``native_GBps_minimal``, ``native_pct_roofline``, bytes, rounds and noise.

Run the bench suite without ``-n``: pytest-xdist spreads checks over processes that share the
cores, and the report sees only its own process's cases.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import pytest
import torch

from bnverify.adapter import BNConfig, NotSupported, TargetError
from bnverify.bench import env, gate, grid, ops, report, roofline, timers
from bnverify.compare import CheckFailure
from bnverify.instances import instance, require_rank
from bnverify.target import summarise_exception

pytestmark = [pytest.mark.bnverify_suite("bench"), pytest.mark.bnverify_tier("full")]


RESULTS_KEY = pytest.StashKey[list]()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """The grid depends on ``--bn-device``: GPU runs add the large shapes and float16."""
    if "bench_case" in metafunc.fixturenames:
        device = str(metafunc.config.getoption("bn_device", default="cpu") or "cpu")
        cases = grid.cases(device)
        metafunc.parametrize("bench_case", cases, ids=[c.id for c in cases])


_NATIVE: list[Any] = []


def _native_target() -> Any:
    if not _NATIVE:
        from bnverify.targets.builtin import torch_target

        _NATIVE.append(torch_target())
    return _NATIVE[0]


def _benchmark_fixture(request: pytest.FixtureRequest) -> Any:
    try:
        return request.getfixturevalue("benchmark")
    except pytest.FixtureLookupError:
        return None


def _guarded(target: Any, fn: Callable[[], Any], budget_s: float) -> Any:
    """Run a measurement under the target's watchdog, on this thread (CUDA timing never changes thread)."""
    timeout = target.call_timeout
    if not timeout or threading.current_thread() is not threading.main_thread():
        return fn()
    return target.watchdog.run(fn, timeout + 10 * budget_s)


def _bench(op: str, target: Any, device: str, check: Any, request: pytest.FixtureRequest,
           case: grid.BenchCase) -> None:
    cuda = grid.is_cuda(device)
    if cuda:
        why = timers.cuda_unavailable_reason(device)
        if why is not None:
            pytest.skip(why)
    rank = len(case.shape)
    require_rank(target, rank, device)
    if case.dtype != torch.float32:
        why = target.probe_dtype(case.dtype, rank, device)
        if why is not None:
            pytest.skip(f"{report.dtype_name(case.dtype)} not supported by the target: {why}")
    cfg = BNConfig(num_features=case.shape[1], rank=rank, dtype=case.dtype, device=device)
    inst = instance(target, cfg)
    native = instance(_native_target(), cfg)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(case.shape, generator=g).to(device=device, dtype=case.dtype)
    dy = torch.randn(case.shape, generator=g).to(device=device, dtype=case.dtype)
    where = f"{roofline.OP_TITLES[op]} on {report.shape_text(case.shape)} {report.dtype_name(case.dtype)}"
    try:
        ops.validate(inst, op, x, dy)
    except NotSupported as exc:
        pytest.skip(str(exc))
    except TargetError as exc:
        raise CheckFailure(f"{where}: {exc}\n  a bench check fails only when the target crashes, hangs or "
                           "returns a wrong shape; nothing was timed") from None
    ops.validate(native, op, x, dy)
    t_arm, grads = ops.op_arm(inst, op, x, dy, report.TARGET)
    n_arm, _ = ops.op_arm(native, op, x, dy, report.NATIVE)
    arms = [ops.copy_arm(x, report.COPY), n_arm, t_arm]  # the target last: pytest-benchmark's own rounds
    policy = grid.policy(device)
    bench = None if cuda else _benchmark_fixture(request)
    if cuda:
        measure: Callable[[], timers.Timing] = lambda: timers.measure_cuda(arms, policy, device=device)
        flush_note = f"L2 flushed: {timers.cuda_flush_bytes(device) >> 20} MiB zeroed before each call"
    else:
        nbytes, flush_note = timers.cpu_flush_plan()
        flush = timers.make_cpu_flush(nbytes)
        measure = lambda: timers.measure_cpu(arms, policy, benchmark=bench, flush=flush, flush_bytes=nbytes)
    try:
        timing = _guarded(target, measure, policy.budget_s)
    except timers.ArmError as exc:
        if exc.arm != report.TARGET:
            raise
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        when = f"round {exc.round + 1}" if exc.round >= 0 else f"warm-up round {-exc.round}"
        raise CheckFailure(f"{where}: {target.name} raised while being timed ({when}): "
                           f"{summarise_exception(cause)}") from None
    result = report.BenchResult(op=op, shape=case.shape, dtype=case.dtype, device=device, samples=timing.samples,
                                method=timing.method, stop_reason=timing.stop_reason, flush_bytes=timing.flush_bytes,
                                extra={"flush": flush_note, "wall_s": timing.wall_s, "notes": timing.notes,
                                       "torch_threads": torch.get_num_threads(), **env.load()})
    if cuda and op != "backward":  # do_bench has no per-call setup: a backward would need a fresh graph each call
        if t_arm.prepare is not None:
            t_arm.prepare()
        result.extra["do_bench"] = timers.crosscheck_do_bench(t_arm.run, result.summary().median,
                                                              grad_to_none=grads)
    elif cuda:
        result.extra["do_bench"] = {"available": False, "reason": "backward needs a fresh graph per call"}
    for name, value in result.metrics().items():
        check.metric(name, value)
    check.detail("timer", timing.method)
    check.detail("stop", timing.stop_reason)
    check.detail("flush", flush_note)
    check.detail("noise_target", f"95% CI half-width of each median <= {policy.max_noise:.0%} "
                                 f"({'met' if timing.converged else 'not met'})")
    if "do_bench" in result.extra:
        check.detail("do_bench", result.extra["do_bench"])
    if bench is not None:  # into pytest-benchmark's own JSON too (--benchmark-json)
        bench.extra_info.update(result.metrics())
    request.config.stash.setdefault(RESULTS_KEY, []).append((target.spec, result))


def test_bench_forward_train(bn_target, bn_device, bn_check, request, bench_case):
    """Training forward (``y = BN(x)``, batch statistics, running statistics updated): time, GB/s, % roofline."""
    _bench("forward_train", bn_target, bn_device, bn_check, request, bench_case)


def test_bench_backward(bn_target, bn_device, bn_check, request, bench_case):
    """Backward of a training forward (dx, dgamma, dbeta from dy): the forward is untimed."""
    _bench("backward", bn_target, bn_device, bn_check, request, bench_case)


def test_bench_train_step(bn_target, bn_device, bn_check, request, bench_case):
    """Training forward then backward, as a training step calls them."""
    _bench("train_step", bn_target, bn_device, bn_check, request, bench_case)


def test_bench_forward_eval(bn_target, bn_device, bn_check, request, bench_case):
    """Eval forward from the running statistics."""
    _bench("forward_eval", bn_target, bn_device, bn_check, request, bench_case)


def test_bench_report(bn_target, bn_device, bn_check, request, tmp_path_factory):
    """The run's table, plot and JSON; with ``$BNVERIFY_PERF_BASELINE``, fails on a slowdown beyond the noise."""
    results = [r for spec, r in request.config.stash.get(RESULTS_KEY, []) if spec == bn_target.spec]
    if not results:
        pytest.skip("no bench case was timed in this process (all skipped, deselected, or spread over "
                    "pytest-xdist workers: run the bench suite without -n)")
    details = env.details(bn_device)
    folder = tmp_path_factory.mktemp("bench")
    gate_report = None
    path = gate.baseline_path(request.config.getoption("bn_perf_baseline", default=None))
    if path:
        try:
            baseline = gate.load_baseline(path)
        except gate.BaselineError as exc:
            raise CheckFailure(f"perf gate: ${gate.BASELINE_ENV}: {exc}") from None
        gate_report = gate.compare(results, baseline, target=bn_target.spec, device_name=details["device_name"],
                                   path=path)
    doc = report.document(results, target=bn_target.spec, target_name=bn_target.name, device=bn_device,
                          device_name=details["device_name"], env=details,
                          gate=None if gate_report is None else gate_report.to_dict())
    json_path = report.write_json(folder / "benchmark.json", doc)
    png = report.plot(results, folder / "bench.png",
                      title=f"{bn_target.name} vs torch native on {details['device_name']}")
    table = report.table(results)
    methods = sorted({r.method for r in results})
    flushes = sorted({str(r.extra.get("flush", "")) for r in results})
    lines = [
        f"{bn_target.name} beside torch's native batch norm on {details['device_name']} "
        f"(torch {details['torch']}, {details['torch_threads']} thread(s))",
        f"timer: {'; '.join(methods)}",
        f"cache: {'; '.join(flushes)}",
        "times: median (IQR) in ms; GB/s at the minimal (two-pass) byte count (bnverify.bench.roofline); "
        "% roof: of the copy bandwidth measured in the same rounds; x native: target/native median",
        table,
    ]
    ratios = [r.ratio_to_native for r in results if r.ratio_to_native > 0]
    if ratios:
        geomean = float(torch.tensor(ratios, dtype=torch.float64).log().mean().exp())
        bn_check.metric("ratio_to_native_geomean", geomean)
        lines.append(f"target/native time, geometric mean over {len(ratios)} cases: {geomean:.2f}")
    bn_check.metric("cases", len(results))
    if gate_report is not None:
        lines.append(gate_report.text())
        bn_check.metric("perf_regressions", len(gate_report.regressions))
        bn_check.detail("gate", gate_report.to_dict())
    else:
        lines.append(f"perf gate: off (set ${gate.BASELINE_ENV} to a previous run's bench/benchmark.json)")
    bn_check.detail("env", details)
    bn_check.detail("table", table)
    bn_check.detail("console", "\n".join(lines))
    bn_check.artifact("plots/bench.png", png)
    bn_check.artifact("bench/benchmark.json", json_path)
    if gate_report is not None and gate_report.regressions:
        raise CheckFailure(
            f"{len(gate_report.regressions)} case(s) slower than the baseline beyond the noise:\n  "
            + "\n  ".join(d.text() for d in gate_report.regressions)
            + f"\n  baseline: {path}; this run's timings: {json_path}")
