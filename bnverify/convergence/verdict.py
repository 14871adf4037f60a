"""The verdict: is a target's training inside the reference's noise band?

:func:`compare` turns target, reference, twin and no-batch-norm curves into a
:class:`ConvergenceVerdict` (numbers, per-epoch series, console table, one-paragraph
explanation); :func:`run_convergence` trains what is missing (the built-in networks from the
cache) and compares; :func:`olympic_mean` is MLPerf's epochs-to-target score.

The statistics (see :func:`compare` for the exact formulas)
-----------------------------------------------------------
*Noise band* (the construction of :mod:`bnverify.convergence.bands`, for two samples).  For every epoch, the reference's accuracy across seeds has a
mean ``mu`` and a seed-to-seed standard deviation ``s_seed``; a *twin* run
(the same seed trained with a second correct batch norm, ``torch.nn.BatchNorm1d``)
measures the run-to-run variation that rounding alone causes, ``s_run``
(``var(twin - reference) = 2 s_run^2``).  With ``n_r`` reference and ``n_t``
target seeds the band is ``mu +/- h``,

    h = max( t_{conf, n_r - 1} * sqrt(s_seed^2 + s_run^2) * sqrt(1/n_r + 1/n_t),
             z_conf * sqrt(mu (1 - mu) / n_test) ),

the one-sided ``conf`` (default 99 %) bound of a two-sample t-test on the
mean of the target's seeds, floored by the binomial standard error of an
accuracy measured on ``n_test`` examples: no band is narrower than what the
test set can resolve, so it never collapses to zero.

*Verdict.*  The target fails when (any of): a run crashed or diverged; its
final accuracy (mean of the last ``final_window`` epochs, averaged over
seeds: a single epoch is too noisy) lies below the band; more than one of its
runs never reaches the target accuracy (MLPerf: "invalid if there is more than
one non-converging run"); or its epochs-to-target (olympic mean: drop the
fastest and the slowest run, as MLPerf does) exceeds the reference's by more
than the same t-bound on the reference's epochs-to-target spread, floored by
the time the reference's mean curve takes to climb through the accuracy
floor (and never less than the one-epoch evaluation interval).  Training
*better* than the band is reported, not failed.

*Bug impact.*  When the target fails: the reference's final accuracy minus
the target's, in percentage points (a crashed or diverged run scores chance,
``1/num_classes``); when it fails only on speed, the accuracy deficit at the
epoch at which the reference reaches the target accuracy, if that is larger.

*Speed-up.*  Olympic-mean epochs-to-target without batch norm divided by the
reference's.  When the plain network does not converge (more than one of its
runs never reaches the target), the figure is a lower bound, ``epochs / reference``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from bnverify import tables
from bnverify.convergence.bands import binomial_floor, run_spread, t_quantile, z_quantile
from bnverify.convergence.network import NormFactory
from bnverify.convergence.protocol import Protocol
from bnverify.convergence.training import (
    Curve,
    _epochs_to,
    cached_curve,
    torch_threads,
    train,
)
from bnverify.mnist import Split


def olympic_mean(values: Iterable[float | None]) -> float | None:
    """MLPerf's score: drop the fastest and the slowest run (with 3 or more), average the rest.

    ``None`` (a run that never converged) counts as infinitely slow; the
    result is ``None`` when a non-converged run survives the trimming.
    """
    v = sorted(math.inf if x is None else float(x) for x in values)
    if not v:
        return None
    if len(v) >= 3:
        v = v[1:-1]
    m = float(np.mean(v))
    return m if math.isfinite(m) else None


def _sd(values: Sequence[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) >= 2 else 0.0


def _pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.{digits}f}%"


def _ep(x: float | None) -> str:
    return "never" if x is None else f"{x:.1f}"


@dataclass
class ConvergenceVerdict:
    """The outcome of :func:`compare`: numbers, per-epoch series and a one-paragraph explanation.

    ``outcome`` is "pass", "fail" or "error" (the reference itself did not
    train, so nothing can be judged); ``passed`` is ``True``/``False``/``None``
    accordingly.  Accuracies are fractions; ``*_points`` are percentage points.
    """

    outcome: str
    explanation: str
    reasons: list[str]
    protocol: Protocol
    n_test: int
    target: list[Curve]
    reference: list[Curve]
    nobn: list[Curve]
    twin: list[Curve] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)
    reference_mean: list[float] = field(default_factory=list)
    reference_sd: list[float] = field(default_factory=list)
    band_low: list[float] = field(default_factory=list)
    band_high: list[float] = field(default_factory=list)
    target_mean: list[float] = field(default_factory=list)
    nobn_mean: list[float] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)
    epochs_to_target: dict[str, Any] = field(default_factory=dict)
    speedup: float | None = None
    speedup_is_lower_bound: bool = False
    target_speedup: float | None = None
    bug_impact_points: float | None = None
    bug_impact_at: str = ""
    epochs_below_band: int = 0
    notes: list[str] = field(default_factory=list)
    seconds_per_epoch: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool | None:
        return {"pass": True, "fail": False}.get(self.outcome)

    def metrics(self) -> dict[str, float]:
        """Flat scalar metrics (for MLflow): NaN left out, +/-inf kept (the tracking plan stores it as MLflow
        accepts it and reads it back as inf).  A band verdict, not an err/tol ratio: none is among them."""
        out: dict[str, float] = {}
        for k, v in self.final.items():
            out[f"final_{k}"] = v
        for who in ("target", "reference", "nobn"):
            ett = self.epochs_to_target.get(who)
            if ett is not None:
                out[f"epochs_to_target_{who}"] = ett
            out[f"nonconverged_{who}"] = float(self.epochs_to_target.get(f"{who}_nonconverged", 0))
        if self.speedup is not None:
            out["bn_speedup"] = self.speedup
            out["bn_speedup_is_lower_bound"] = float(self.speedup_is_lower_bound)
        if self.target_speedup is not None:
            out["target_speedup"] = self.target_speedup
        if self.bug_impact_points is not None:
            out["bug_impact_points"] = self.bug_impact_points
        out["epochs_below_band"] = float(self.epochs_below_band)
        out["passed"] = float(self.outcome == "pass")
        for k, v in self.seconds_per_epoch.items():
            out[f"seconds_per_epoch_{k}"] = v
        return {k: float(v) for k, v in out.items() if v is not None and not math.isnan(float(v))}

    def series(self) -> dict[str, list[float]]:
        """Per-epoch series (step = epoch, starting at 1) for MLflow."""
        out = {
            "target_test_acc": self.target_mean,
            "reference_test_acc": self.reference_mean,
            "reference_band_low": self.band_low,
            "reference_band_high": self.band_high,
            "nobn_test_acc": self.nobn_mean,
        }
        for who, curves in (("target", self.target), ("reference", self.reference), ("nobn", self.nobn)):
            loss = _mean_series([c.train_loss for c in curves if c.ok], len(self.epochs))
            if loss:
                out[f"{who}_train_loss"] = loss
        return {k: list(map(float, v)) for k, v in out.items() if v}

    def table(self) -> str:
        """A console table: accuracy per epoch (every epoch up to 10, then every 5th and the last)."""
        e = self.epochs
        shown = [i for i in e if i <= 10 or i % 5 == 0 or i == e[-1]] if e else []
        rows = []
        for i in shown:
            k = i - 1
            t = self.target_mean[k] if k < len(self.target_mean) else float("nan")
            r = self.reference_mean[k] if k < len(self.reference_mean) else float("nan")
            band = (
                f"[{100 * self.band_low[k]:.1f}, {100 * self.band_high[k]:.1f}]" if k < len(self.band_low) else ""
            )
            nb = self.nobn_mean[k] if k < len(self.nobn_mean) else float("nan")
            below = k < len(self.band_low) and t < self.band_low[k]
            rows.append([i, _pct(t), f"{_pct(r)} {band}".rstrip(), _pct(nb), "<" if below else ""])
        # the last, unnamed column marks the epochs at which the target is below the band
        lines = [tables.table(rows, ["epoch", "target", "reference (band)", "no-BN", ""],
                              align=["right"] * 4 + ["left"])]
        ett = self.epochs_to_target
        tgt = _pct(self.protocol.target_accuracy, 0)
        lines.append(
            f"epochs to {tgt}: target {_ep(ett.get('target'))}, reference {_ep(ett.get('reference'))}"
            f" (allowed <= {_ep(ett.get('allowed'))}), no-BN {_ep(ett.get('nobn'))}"
        )
        if self.speedup is not None:
            bound = ">= " if self.speedup_is_lower_bound else ""
            lines.append(f"batch-norm speed-up over no-BN: {bound}{self.speedup:.2f}x")
        lines.append(f"verdict: {self.outcome.upper()}: {self.explanation}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["passed"] = self.passed
        return d


def _mean_series(rows: Sequence[Sequence[float]], length: int) -> list[float]:
    rows = [r for r in rows if len(r) >= length]
    if not rows or length == 0:
        return []
    return [float(x) for x in np.mean(np.asarray([r[:length] for r in rows], dtype=np.float64), axis=0)]


def _acc_matrix(curves: Sequence[Curve], epochs: int) -> np.ndarray:
    """Accuracy per (run, epoch); epochs after a crash or divergence score chance."""
    m = np.empty((len(curves), epochs), dtype=np.float64)
    for i, c in enumerate(curves):
        row = list(c.test_acc[:epochs])  # a stopped run holds the epochs it completed
        row += [c.chance] * (epochs - len(row))
        m[i] = row[:epochs]
    return m


#: z times the binomial standard error of an accuracy measured on ``n`` examples (shared band logic).
_binomial_floor = binomial_floor


def compare(
    target_curves: Sequence[Curve],
    reference_curves: Sequence[Curve],
    nobn_curves: Sequence[Curve] = (),
    protocol: Protocol | None = None,
    *,
    twin_curves: Sequence[Curve] = (),
    target_name: str = "target",
) -> ConvergenceVerdict:
    """Judge the target's curves against the reference's (see the module docstring).

    ``twin_curves`` are runs of a second correct batch norm with seeds that
    the reference also ran; their difference from the reference measures
    run-to-run variation.  The bounds are one-sided at ``protocol.confidence``
    with ``t`` quantiles on ``n_reference - 1`` degrees of freedom (``z`` for
    the binomial floor).
    """
    protocol = protocol or Protocol()
    target_curves, reference_curves = list(target_curves), list(reference_curves)
    nobn_curves, twin_curves = list(nobn_curves), list(twin_curves)
    if not target_curves or not reference_curves:
        raise ValueError("compare needs at least one target and one reference curve")
    E = protocol.epochs
    n_test = reference_curves[0].n_test
    goal = protocol.target_accuracy
    w = max(1, min(protocol.final_window, E))
    conf = protocol.confidence
    v = ConvergenceVerdict(
        outcome="error", explanation="", reasons=[], protocol=protocol, n_test=n_test,
        target=target_curves, reference=reference_curves, nobn=nobn_curves, twin=twin_curves,
        epochs=list(range(1, E + 1)),
    )
    for who, curves in (("target", target_curves), ("reference", reference_curves), ("nobn", nobn_curves)):
        times = [t for c in curves for t in c.epoch_time_s]
        if times:
            v.seconds_per_epoch[who] = float(np.mean(times))

    bad_ref = [c for c in reference_curves if not c.ok or len(c.test_acc) < E]
    if bad_ref:
        c = bad_ref[0]
        v.explanation = (
            f"the reference batch norm itself did not complete {E} epochs (seed {c.seed}: "
            f"{c.status}, {c.message or 'too few epochs'}); nothing can be judged against it"
        )
        v.reasons = ["reference failed"]
        return v

    n_r, n_t = len(reference_curves), len(target_curves)
    R = _acc_matrix(reference_curves, E)
    T = _acc_matrix(target_curves, E)
    df = n_r - 1
    tq = t_quantile(conf, df) if df >= 1 else 0.0
    zq = z_quantile(conf)
    se_factor = math.sqrt(1.0 / n_r + 1.0 / n_t)
    if df < 1:
        v.notes.append("one reference seed: the band is the test-set floor (plus run-to-run variation) only")

    # run-to-run variation from twin runs (same seed, a second correct batch norm)
    ref_by_seed = {c.seed: i for i, c in enumerate(reference_curves)}
    pairs = [(c, ref_by_seed[c.seed]) for c in twin_curves if c.ok and c.seed in ref_by_seed and len(c.test_acc) >= E]
    if pairs:
        D = np.asarray([np.asarray(c.test_acc[:E]) - R[i] for c, i in pairs])
        s_run = np.asarray(run_spread(D, axis=0))
        d_final = np.asarray([c.final_accuracy(w) - reference_curves[i].final_accuracy(w) for c, i in pairs])
        s_run_final = float(run_spread(d_final))
    else:
        s_run = np.zeros(E)
        s_run_final = 0.0

    mu = R.mean(axis=0)
    s_seed = R.std(axis=0, ddof=1) if n_r >= 2 else np.zeros(E)
    sigma = np.sqrt(s_seed**2 + s_run**2)
    half = np.maximum(tq * sigma * se_factor, _binomial_floor(mu, n_test, zq))
    v.reference_mean, v.reference_sd = mu.tolist(), sigma.tolist()
    v.band_low, v.band_high = np.clip(mu - half, 0, 1).tolist(), np.clip(mu + half, 0, 1).tolist()
    tmean = T.mean(axis=0)
    v.target_mean = tmean.tolist()
    if nobn_curves:
        v.nobn_mean = _acc_matrix(nobn_curves, E).mean(axis=0).tolist()
    v.epochs_below_band = int(np.sum(tmean < mu - half))

    # final accuracy
    rf = np.asarray([c.final_accuracy(w) for c in reference_curves])
    tf = np.asarray([c.final_accuracy(w) for c in target_curves])
    mu_f, s_seed_f = float(rf.mean()), _sd(rf.tolist())
    sigma_f = math.sqrt(s_seed_f**2 + s_run_final**2)
    floor_f = float(_binomial_floor(mu_f, n_test, zq))
    half_f = max(tq * sigma_f * se_factor, floor_f)
    t_f = float(tf.mean())
    v.final = {
        "target": t_f,
        "reference": mu_f,
        "reference_sd_seed": s_seed_f,
        "reference_sd_run": s_run_final,
        "band_low": mu_f - half_f,
        "band_high": mu_f + half_f,
        "band_half_width": half_f,
        "binomial_floor": floor_f,
        "t_quantile": tq,
        "z_quantile": zq,
        "window": float(w),
    }
    if nobn_curves:
        v.final["nobn"] = float(np.mean([c.final_accuracy(w) for c in nobn_curves]))
    # diagnostic only: target minus reference on the same seed (same start, same data order)
    ref_final_by_seed = {c.seed: c.final_accuracy(w) for c in reference_curves}
    paired = [c.final_accuracy(w) - ref_final_by_seed[c.seed] for c in target_curves if c.seed in ref_final_by_seed]
    if paired:
        v.final["paired_difference"] = float(np.mean(paired))
        v.final["paired_max_abs_difference"] = float(np.max(np.abs(paired)))

    # epochs to the target accuracy
    def ett(curves: Sequence[Curve]) -> list[float | None]:
        return [c.epochs_to(goal) if c.ok or c.test_acc else None for c in curves]

    r_e, t_e = ett(reference_curves), ett(target_curves)
    r_ol, t_ol = olympic_mean(r_e), olympic_mean(t_e)
    r_nc, t_nc = sum(x is None for x in r_e), sum(x is None for x in t_e)
    info: dict[str, Any] = {
        "target": t_ol, "reference": r_ol, "target_per_seed": t_e, "reference_per_seed": r_e,
        "target_nonconverged": t_nc, "reference_nonconverged": r_nc, "allowed": None,
    }
    reasons: list[str] = []
    speed_fail = False
    ref_converges = r_nc <= 1 and r_ol is not None
    if ref_converges and r_ol is not None:  # r_ol is not None is implied by ref_converges
        r_fin = [x for x in r_e if x is not None]
        s_e = _sd(r_fin)
        delta = float(_binomial_floor(goal, n_test, zq))
        mean_curve = [float(np.mean([c.initial_test_acc for c in reference_curves])), *mu.tolist()]
        e_lo = _epochs_to(mean_curve, goal - delta)
        e_hi = _epochs_to(mean_curve, goal + delta)
        e_hi = float(E) if e_hi is None else e_hi
        floor_e = max(1.0, (e_hi - (e_lo if e_lo is not None else 0.0)) / 2.0)
        allowed = r_ol + max(tq * s_e * se_factor, floor_e)
        info.update({"reference_sd": s_e, "allowed": allowed, "floor_epochs": floor_e})
        if t_nc > 1:
            speed_fail = True
            reasons.append(f"{t_nc} of {n_t} runs never reached {_pct(goal, 0)} in {E} epochs")
        elif t_ol is None or t_ol > allowed:
            speed_fail = True
            reasons.append(f"slower to {_pct(goal, 0)}: {_ep(t_ol)} epochs against at most {allowed:.1f}")
    else:
        v.notes.append(
            f"the reference reached {_pct(goal, 0)} in only {n_r - r_nc} of {n_r} seeds within {E} epochs, "
            "so epochs-to-target is not judged"
        )
    v.epochs_to_target = info

    # no batch norm and the speed-up
    if nobn_curves:
        n_e = ett(nobn_curves)
        n_ol = olympic_mean(n_e)
        info["nobn"], info["nobn_per_seed"] = n_ol, n_e
        info["nobn_nonconverged"] = sum(x is None for x in n_e)
        if r_ol:
            if n_ol is not None:
                v.speedup = n_ol / r_ol
            else:
                v.speedup, v.speedup_is_lower_bound = E / r_ol, True
        if t_ol:
            v.target_speedup = (n_ol if n_ol is not None else float(E)) / t_ol

    # failures
    broken = [c for c in target_curves if not c.ok]
    if broken:
        c = broken[0]
        reasons.insert(0, f"{c.status} in {len(broken)} of {n_t} runs (seed {c.seed}: {c.message})")
    final_fail = t_f < mu_f - half_f
    if final_fail:
        reasons.append(
            f"final accuracy {_pct(t_f)} below the band [{100 * (mu_f - half_f):.1f}, {100 * (mu_f + half_f):.1f}]"
        )
    if t_f > mu_f + half_f:
        v.notes.append(
            f"final accuracy {_pct(t_f)} is above the reference band: better than the reference, which is "
            "unusual for a batch norm (check that nothing leaks test data into training)"
        )

    band_txt = f"[{100 * (mu_f - half_f):.1f}, {100 * (mu_f + half_f):.1f}]"
    sd_e = info.get("reference_sd")
    ref_e_txt = f"{_ep(r_ol)}" + (f" +/- {sd_e:.1f}" if sd_e else "")
    n_word = f"olympic mean of {n_t} seed{'s' if n_t != 1 else ''}"
    reach = (
        f"reached {_pct(goal, 0)} in {_ep(t_ol)} epochs ({n_word}); reference {ref_e_txt}"
        if t_ol is not None
        else f"did not reach {_pct(goal, 0)} in {E} epochs ({t_nc} of {n_t} runs never did); reference took {ref_e_txt}"
    )
    if broken or final_fail or speed_fail:
        v.outcome = "fail"
        deficit_final = 100 * (mu_f - t_f)
        impact, where = deficit_final, f"final accuracy (mean of the last {w} epochs)"
        deficit_early = None
        if speed_fail and r_ol is not None:
            k = min(E, max(1, math.ceil(r_ol))) - 1
            deficit_early = (k + 1, 100 * float(mu[k] - tmean[k]))
            if not (broken or final_fail):  # slower only: the cost is the accuracy missing on the way
                impact, where = deficit_early[1], f"epoch {k + 1}, when the reference reaches {_pct(goal, 0)}"
        v.bug_impact_points, v.bug_impact_at = impact, where
        lead = f"{target_name} {reach}"
        if broken:
            c = broken[0]
            lead = f"{target_name} {c.status} in {len(broken)} of {n_t} runs (seed {c.seed}: {c.message}); it {reach}"
        chance = _pct(1.0 / max(1, target_curves[0].num_classes), 0)
        chance_txt = f", a stopped run scoring chance ({chance})" if broken else ""
        v.explanation = (
            f"{lead}; its final accuracy {_pct(t_f)}{chance_txt} is {deficit_final:.1f} points "
            f"{'below' if deficit_final >= 0 else 'above'} the reference's {_pct(mu_f)} (band {band_txt})"
            + (
                f"; at epoch {deficit_early[0]}, when the reference reaches {_pct(goal, 0)}, it trails by "
                f"{deficit_early[1]:.1f} points"
                if deficit_early is not None
                else ""
            )
            + "."
        )
    else:
        v.outcome = "pass"
        v.explanation = (
            f"{target_name} trains like the reference: it {reach}; its final accuracy {_pct(t_f)} "
            f"lies {'inside' if t_f <= mu_f + half_f else 'above'} the reference band {band_txt} "
            f"(reference {_pct(mu_f)})."
        )
    if v.speedup is not None:
        sp = f"{'at least ' if v.speedup_is_lower_bound else ''}{v.speedup:.1f}x"
        tail = f" (no-BN never reached {_pct(goal, 0)} in {E} epochs)" if v.speedup_is_lower_bound else ""
        v.explanation += f" Batch norm trains {sp} faster than no batch norm{tail}."
    v.reasons = reasons
    return v


def run_convergence(
    target_factory: NormFactory,
    split: Split,
    protocol: Protocol | None = None,
    device: str | torch.device = "cpu",
    *,
    target_name: str = "target",
    threads: int | None = 1,
) -> ConvergenceVerdict:
    """Train the target, the (cached) reference, twin and no-batch-norm networks and compare.

    The reference is the reference batch norm; the twin, ``torch.nn.BatchNorm1d``,
    runs the first seed only, to measure run-to-run variation.
    ``threads`` sets torch's intra-op CPU threads for the duration and
    restores them after (``None`` leaves them alone).  The default, one, is
    what these small matrices run best with on a shared 2-core machine: the
    full tier took 34 s with one thread and 55-68 s with two while other jobs
    ran (see :func:`torch_threads`).
    """
    protocol = protocol or Protocol.for_split(split)
    with torch_threads(threads):
        ref, nobn = [], []
        for s in protocol.seeds:
            ref.append(cached_curve("reference", split, protocol, s, device))
            nobn.append(cached_curve("no-bn", split, protocol, s, device))
        twins = [cached_curve("torch", split, protocol, protocol.seeds[0], device)]
        tgt = [train(target_factory, split, protocol, s, device, label="target") for s in protocol.seeds]
        return compare(tgt, ref, nobn, protocol, twin_curves=twins, target_name=target_name)


def json_safe(value: Any) -> Any:
    """``value`` with tuples as lists and non-finite floats as ``None``: strict JSON, and portable
    through pytest-xdist's channel (used for verdicts, claim numbers and protocol details)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
