"""The seed-claims study: what the seeds and Ioffe & Szegedy (2015) claim about batch norm, tested.

Each ``claim_*`` function trains what its claim needs with a given norm layer, on several seeds
(``CLAIM_SEEDS``), and returns a :class:`ClaimResult`: the claim's statistics as bands
(:mod:`bnverify.convergence.bands`: the estimate over seeds, widened by the measured seed-to-seed
and run-to-run spread) and one of three outcomes, *reproduced*, *not reproduced* or
*inconclusive* (a band straddles its threshold).  :func:`seed_claims` runs them by name, with the
reference batch norm by default.  Nothing here raises for a failing norm layer: its runs are
reported as crashed or diverged, and score what such a run scores (chance accuracy, no speed-up).

Run-to-run spread.  For the first ``CLAIM_TWIN_SEEDS`` seed(s) each experiment is also run as a
*twin*: ``torch.nn.BatchNorm1d`` in place of the reference batch norm, on training images moved
by ``CLAIM_TWIN_ULPS`` float32 ulp(s) (random sign per pixel), so that the batch-norm arithmetic
and every other rounding differ in the last bit, as they do between machines.  The twin's
statistic minus the reference's on the same seed is one run-to-run difference.  Reference and
twin runs do not depend on the target and are trained once per process.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bnverify.convergence import bands as B
from bnverify.convergence.network import (
    GhostNorm,
    NormFactory,
    _reference_factory,
    _torch_factory,
    build_mlp,
)
from bnverify.convergence.protocol import (
    _STREAM_DATA,
    _STREAM_GLOBAL,
    Protocol,
    _derive_seed,
)
from bnverify.convergence.training import (
    Curve,
    _describe_exc,
    cached_curve,
    torch_threads,
    train,
)
from bnverify.convergence.verdict import (
    _acc_matrix,
    _ep,
    _pct,
    olympic_mean,
)
from bnverify.mnist import Split
from bnverify.tolerances import BAND_CONFIDENCE, CLAIM_SEEDS, CLAIM_TWIN_SEEDS, CLAIM_TWIN_ULPS

OUTCOMES = B.OUTCOMES


@dataclass
class ClaimResult:
    """One claim of the seeds, tested: its ``outcome`` (reproduced / not reproduced / inconclusive),
    the ``bands`` that decided it and the ``numbers`` behind them.  ``reproduced`` is
    ``outcome == "reproduced"``."""

    claim: str
    source: str
    reproduced: bool
    numbers: dict[str, Any]
    explanation: str
    seconds: float = 0.0
    outcome: str = ""
    bands: list[B.Band] = field(default_factory=list)

    def band_text(self) -> str:
        """One line per band: estimate, band, threshold and the band's outcome."""
        return "; ".join(b.describe() for b in self.bands)


def _claim(
    claim: str, source: str, outcome: str, bands: Sequence[B.Band], numbers: dict[str, Any], explanation: str,
    t0: float,
) -> ClaimResult:
    numbers = {**numbers, "outcome": outcome, "bands": {_key(b.name): b.as_dict() for b in bands}}
    text = f"{explanation}; {outcome}: " + "; ".join(b.describe() for b in bands)
    return ClaimResult(claim, source, outcome == B.REPRODUCED, numbers, text, time.perf_counter() - t0,
                       outcome, list(bands))


def _key(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")[:60]


# ------------------------------------------------------------------------------ per-seed runs, twins


class _LrRun(TypedDict):
    """One seed's result at one learning rate (:func:`claim_lr_sweep`)."""

    bn: float
    no_bn: float
    bn_status: str
    no_bn_status: str
    bn_txt: str
    no_bn_txt: str


class _LrRow(TypedDict):
    """One learning rate's summary over seeds (:func:`claim_lr_sweep`)."""

    lr: float
    bn_acc: float
    no_bn_acc: float
    outcome: str
    bn: list[str]
    no_bn: list[str]
    bn_status: list[str]
    no_bn_status: list[str]


#: Per-seed results of the reference and twin experiments, by (experiment, who, data, seed, device).
_RUNS: dict[tuple, Any] = {}
_TWIN_SPLITS: dict[str, Split] = {}


def twin_split(split: Split, ulps: int = CLAIM_TWIN_ULPS) -> Split:
    """``split`` with every non-zero training pixel moved by ``ulps`` float32 ulp(s), up or down at random
    (a fixed generator): the last-bit difference the twin runs train on.  Cached per data."""
    key = f"{split.fingerprint()}:{ulps}"
    out = _TWIN_SPLITS.get(key)
    if out is None:
        x = np.array(split.x_train, dtype=np.float32, copy=True)
        rng = np.random.default_rng(20150211)
        up = rng.random(x.shape) < 0.5
        nz = x != 0
        for _ in range(int(ulps)):
            x = np.where(nz, np.where(up, np.nextafter(x, np.float32(np.inf)), np.nextafter(x, np.float32(0))), x)
        x = x.astype(np.float32)
        out = Split(x, split.y_train, split.x_test, split.y_test, name=f"{split.name}+twin{ulps}ulp",
                    source=split.source)
        _TWIN_SPLITS[key] = out
    return out


def _is_reference(factory: NormFactory | None) -> bool:
    return factory is None or factory is _reference_factory


def _runs(
    key: tuple, factory: NormFactory | None, split: Split, seeds: Sequence[int], device: Any,
    run: Callable[[NormFactory, Split, int], Any], *, who: str | None = None,
) -> list[Any]:
    """``run(factory, split, seed)`` per seed; runs of the reference (and twins, ``who="twin"``) once per process."""
    who = who or ("reference" if _is_reference(factory) else None)
    f = factory or _reference_factory
    out = []
    for s in seeds:
        if who is None:
            out.append(run(f, split, s))
            continue
        k = (key, who, split.fingerprint(), int(s), str(device))
        if k not in _RUNS:
            _RUNS[k] = run(f, split, s)
        out.append(_RUNS[k])
    return out


def _twin_differences(
    key: tuple, split: Split, seeds: Sequence[int], device: Any, run: Callable[[NormFactory, Split, int], Any],
    stats: Callable[[Any], dict[str, float]], twin: bool,
) -> dict[str, list[float]]:
    """Twin minus reference, per statistic, for the first ``CLAIM_TWIN_SEEDS`` seeds (empty without ``twin``)."""
    if not twin:
        return {}
    first = list(seeds)[:CLAIM_TWIN_SEEDS]
    ref = _runs(key, None, split, first, device, run)
    tw = _runs(key, _torch_factory, twin_split(split), first, device, run, who="twin")
    out: dict[str, list[float]] = {}
    for a, b in zip(ref, tw):
        sa, sb = stats(a), stats(b)
        for k in sa:
            out.setdefault(k, []).append(sb[k] - sa[k])
    return out


def _floor(p: float, n: int) -> float:
    """What a test set of ``n`` resolves around an accuracy ``p``: the binomial bound at BAND_CONFIDENCE."""
    return float(B.binomial_floor(p, n, B.z_quantile(BAND_CONFIDENCE)))


def _acc(c: Curve, window: int = 1) -> float:
    return c.final_accuracy(window)


def _trains(c: Curve) -> str:
    return f"{_pct(c.final_accuracy(1))}" if c.ok else c.status


def _mean(xs: Iterable[float]) -> float:
    xs = [float(x) for x in xs]
    return float(np.mean(xs)) if xs else float("nan")


# ------------------------------------------------------------------------------ the claims


def claim_initial_loss(
    split: Split, norm_factory: NormFactory, device: Any = "cpu", seeds: Sequence[int] = CLAIM_SEEDS,
    twin: bool = True,
) -> ClaimResult:
    """Sanity check: the loss of the untrained network is near ln(10) (uniform predictions).

    Measures the cross-entropy of the first mini-batch before any update, for
    the seed's network with and without batch norm (torch's default init).
    Statistic per seed: the loss's distance from ln(num_classes), relative.
    Reproduced when the band of its mean lies below 10 % with and without
    batch norm: the cross-entropy of near-zero logits, which a 10 % margin
    allows a standard deviation up to about 0.7.
    """
    t0 = time.perf_counter()
    expected = math.log(split.num_classes)
    key = ("initial-loss",)

    def run(f: NormFactory, sp: Split, s: int) -> dict[str, Any]:
        p = Protocol(epochs=1, seeds=(s,))
        bn = train(f, sp, p, s, device, label="bn")
        plain = train(None, sp, p, s, device, label="no-bn")
        return {"bn": bn.initial_loss, "no_bn": plain.initial_loss, "ok": bn.ok and plain.ok}

    def stats(r: dict[str, Any]) -> dict[str, float]:
        dev = lambda x: abs(x - expected) / expected if math.isfinite(x) else 1.0  # noqa: E731
        return {"bn": dev(r["bn"]), "no_bn": dev(r["no_bn"])}

    runs = _runs(key, norm_factory, split, seeds, device, run)
    diffs = _twin_differences(key, split, seeds, device, run, stats, twin)
    st = [stats(r) for r in runs]
    bands = [
        B.band(f"relative distance of the first-batch loss from ln {split.num_classes}, {who}",
               [x[k] for x in st], 0.1, above=False, run_differences=diffs.get(k, ()))
        for k, who in (("bn", "with batch norm"), ("no_bn", "without"))
    ]
    losses = {"bn": [r["bn"] for r in runs], "no_bn": [r["no_bn"] for r in runs]}
    return _claim(
        "initial loss is near ln(10)", "sanity check (cs231n; seed 001's training notes)",
        B.all_of(b.outcome for b in bands), bands,
        {"ln_classes": expected, **losses, "seeds": list(seeds)},
        f"first-batch loss with batch norm {_mean(losses['bn']):.3f}, without {_mean(losses['no_bn']):.3f}; "
        f"ln {split.num_classes} = {expected:.3f} (within 10 % required)",
        t0,
    )


def claim_overfit_batch(
    split: Split, norm_factory: NormFactory, device: Any = "cpu", seeds: Sequence[int] = CLAIM_SEEDS,
    steps: int = 300, lr: float = 0.1, twin: bool = True,
) -> ClaimResult:
    """Sanity check: the network with batch norm can overfit a single mini-batch of 100 examples.

    Repeats SGD (lr 0.1: the single-batch test asks for memorisation, not the
    protocol's pace) on one fixed batch for ``steps`` steps and measures the
    loss and the train-mode accuracy on it.  Statistic per seed: log10 of the
    last loss over the first (a crashed run or a non-finite loss scores 0: no
    decrease).  Reproduced when its band lies below -2 (the loss has fallen
    below 1 % of its starting value); the accuracy on the batch is reported.
    """
    t0 = time.perf_counter()
    key = ("overfit-batch", steps, lr)

    def run(f: NormFactory, sp: Split, s: int) -> dict[str, Any]:
        dev = torch.device(device)
        data = sp.tensors(dev)
        g = torch.Generator().manual_seed(_derive_seed(s, _STREAM_DATA))
        idx = torch.randperm(sp.n_train, generator=g)[:100].to(dev)
        xb, yb = data.x_train[idx], data.y_train[idx]
        first = last = float("nan")
        acc = 0.0
        status = "ok"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_derive_seed(s, _STREAM_GLOBAL))
            try:
                model = build_mlp(f, in_features=sp.in_features, num_classes=sp.num_classes, seed=s).to(dev)
                opt = torch.optim.SGD(model.parameters(), lr=lr)
                model.train()
                for i in range(steps):
                    out = model(xb)
                    loss = F.cross_entropy(out, yb)
                    if i == 0:
                        first = float(loss.detach())
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                with torch.no_grad():
                    out = model(xb)
                    last = float(F.cross_entropy(out, yb))
                    acc = float((out.argmax(1) == yb).float().mean())
            except Exception as exc:  # noqa: BLE001 - a norm layer that raises fails the claim, never the study
                status = f"crashed: {_describe_exc(exc)}"
        return {"first": first, "last": last, "accuracy": acc, "status": status}

    def stats(r: dict[str, Any]) -> dict[str, float]:
        ok = r["status"] == "ok" and math.isfinite(r["last"]) and math.isfinite(r["first"]) and r["first"] > 0
        return {"log_ratio": math.log10(max(r["last"], 1e-30) / r["first"]) if ok else 0.0}

    runs = _runs(key, norm_factory, split, seeds, device, run)
    diffs = _twin_differences(key, split, seeds, device, run, stats, twin)
    band = B.band("log10(last loss / first loss)", [stats(r)["log_ratio"] for r in runs], -2.0, above=False,
                  run_differences=diffs.get("log_ratio", ()), fmt="{:.2f}")
    bad = [r["status"] for r in runs if r["status"] != "ok"]
    first, last, acc = _mean(r["first"] for r in runs), _mean(r["last"] for r in runs), min(r["accuracy"] for r in runs)
    return _claim(
        "a single mini-batch can be overfit", "sanity check (cs231n)", band.outcome, [band],
        {"steps": steps, "lr": lr, "loss_first": first, "loss_last": last, "accuracy": acc,
         "accuracy_per_seed": [r["accuracy"] for r in runs], "status": bad[0] if bad else "ok",
         "seeds": list(seeds)},
        f"after {steps} steps on one batch of 100: loss {first:.3f} -> {last:.4f}, accuracy {_pct(acc)}"
        f" (mean over {len(runs)} seeds; lowest accuracy)" + (f" ({bad[0]})" if bad else ""),
        t0,
    )


def claim_bn_faster(
    split: Split, norm_factory: NormFactory | None, device: Any = "cpu", protocol: Protocol | None = None,
    twin: bool = True,
) -> ClaimResult:
    """Seed 002's headline: with batch norm the network reaches the target accuracy several times sooner.

    Runs the full protocol (cached curves when ``norm_factory`` is ``None``,
    i.e. the reference) with and without batch norm.  Statistic per seed: the
    speed-up, epochs to the target accuracy without batch norm over epochs
    with it; a plain run that never reaches the target counts the protocol's
    epochs (so the speed-up is a lower bound), a batch-norm run that never
    does scores 0.  The seed reports about 10 epochs to 98 % against
    "struggling" after 50, so: reproduced when the band of the speed-up lies
    above 5x.  The twin is the convergence suite's (``torch.nn.BatchNorm1d``
    on the first seed, same data), cached with it.
    """
    t0 = time.perf_counter()
    p = protocol or Protocol.for_split(split)
    goal = p.target_accuracy
    if _is_reference(norm_factory):
        bn = [cached_curve("reference", split, p, s, device) for s in p.seeds]
    else:
        bn = [train(norm_factory, split, p, s, device, label="bn") for s in p.seeds]
    plain = [cached_curve("no-bn", split, p, s, device) for s in p.seeds]

    def speed(b: Curve, n: Curve) -> float:
        e_b = b.epochs_to(goal) if b.ok else None
        if e_b is None or e_b <= 0:
            return 0.0
        e_n = n.epochs_to(goal) if n.ok else None
        return (float(p.epochs) if e_n is None else e_n) / e_b

    diffs: list[float] = []
    if twin:
        s0 = p.seeds[0]
        ref0, tw0 = cached_curve("reference", split, p, s0, device), cached_curve("torch", split, p, s0, device)
        diffs = [speed(tw0, plain[0]) - speed(ref0, plain[0])]
    band = B.band("speed-up (epochs to target without / with batch norm)",
                  [speed(b, n) for b, n in zip(bn, plain)], 5.0, run_differences=diffs, fmt="{:.2f}")
    e_bn = olympic_mean(c.epochs_to(goal) if c.ok else None for c in bn)
    e_plain = olympic_mean(c.epochs_to(goal) if c.ok else None for c in plain)
    lower = e_plain is None
    txt = (f"batch norm itself did not reach {_pct(goal, 0)} in {p.epochs} epochs" if e_bn is None else
           f"no batch norm never reached {_pct(goal, 0)} in {p.epochs} epochs: the speed-up is a lower bound"
           if lower else "both reach it")
    fb, fn = _mean(c.final_accuracy(p.final_window) for c in bn), _mean(c.final_accuracy(p.final_window) for c in plain)
    return _claim(
        f"batch norm reaches {_pct(goal, 0)} several times sooner", "seed 002 (MNIST, 784-300-50-10)", band.outcome,
        [band],
        {
            "epochs_to_target_bn": e_bn, "epochs_to_target_no_bn": e_plain, "speedup": band.estimate,
            "speedup_is_lower_bound": lower, "final_bn": fb, "final_no_bn": fn, "epochs": p.epochs, "target": goal,
            "seeds": list(p.seeds),
        },
        f"epochs to {_pct(goal, 0)} with batch norm {_ep(e_bn)}, without {_ep(e_plain)}; {txt}; accuracy after "
        f"{p.epochs} epochs {_pct(fb)} vs {_pct(fn)}",
        t0,
    )


def claim_lr_sweep(
    split: Split, norm_factory: NormFactory, device: Any = "cpu", seeds: Sequence[int] = CLAIM_SEEDS,
    lrs: Sequence[float] = (0.01, 0.1, 0.5, 1.0, 2.0, 5.0), epochs: int = 3, base_lr: float = 0.01,
    twin: bool = True,
) -> ClaimResult:
    """Seed 002 / Santurkar et al.: batch norm trains at learning rates where the plain network fails.

    Trains both networks for ``epochs`` at each rate.  A network "trains"
    when its test accuracy (chance for a diverged or crashed run) is at least
    half-way from chance to 100 %; it "fails" when its accuracy is within 10
    points of chance.  Per rate both are bands over seeds (floored by what the
    test set resolves).  Only rates above the protocol's ``base_lr`` count
    (the claim is about *higher* rates; at the base rate the plain network is
    merely slow).  Reproduced when at some such rate batch norm trains and
    the plain network fails, both outside their bands' noise; not reproduced
    when at every such rate one of them is robustly on the wrong side.
    """
    t0 = time.perf_counter()
    chance = 1.0 / split.num_classes
    trains_at, fails_at = (1 + chance) / 2, chance + 0.10
    key = ("lr-sweep", tuple(lrs), epochs)

    def run(f: NormFactory, sp: Split, s: int) -> dict[float, _LrRun]:
        out: dict[float, _LrRun] = {}
        for lr in lrs:
            q = Protocol(epochs=epochs, lr=lr, seeds=(s,))
            b, n = train(f, sp, q, s, device, label="bn"), train(None, sp, q, s, device, label="no-bn")
            out[lr] = {"bn": _acc(b), "no_bn": _acc(n), "bn_status": b.status, "no_bn_status": n.status,
                       "bn_txt": _trains(b), "no_bn_txt": _trains(n)}
        return out

    whos: tuple[Literal["bn", "no_bn"], ...] = ("bn", "no_bn")

    def stats(r: dict[float, _LrRun]) -> dict[str, float]:
        return {f"{who}@{lr:g}": r[lr][who] for lr in lrs for who in whos}

    runs = _runs(key, norm_factory, split, seeds, device, run)
    diffs = _twin_differences(key, split, seeds, device, run, stats, twin)
    rows: list[_LrRow] = []
    bands: list[B.Band] = []
    per_rate: list[str] = []
    for lr in lrs:
        a_bn, a_n = [r[lr]["bn"] for r in runs], [r[lr]["no_bn"] for r in runs]
        b1 = B.band(f"lr {lr:g}: batch-norm accuracy", a_bn, trains_at, run_differences=diffs.get(f"bn@{lr:g}", ()),
                    floor=_floor(_mean(a_bn), split.n_test))
        b2 = B.band(f"lr {lr:g}: plain accuracy", a_n, fails_at, above=False,
                    run_differences=diffs.get(f"no_bn@{lr:g}", ()), floor=_floor(_mean(a_n), split.n_test))
        outcome = B.all_of([b1.outcome, b2.outcome])
        rows.append({"lr": lr, "bn_acc": _mean(a_bn), "no_bn_acc": _mean(a_n), "outcome": outcome,
                     "bn": [r[lr]["bn_txt"] for r in runs], "no_bn": [r[lr]["no_bn_txt"] for r in runs],
                     "bn_status": [r[lr]["bn_status"] for r in runs],
                     "no_bn_status": [r[lr]["no_bn_status"] for r in runs]})
        if lr > base_lr:
            bands += [b1, b2]
            per_rate.append(outcome)
    outcome = B.any_of(per_rate)
    hit = [r["lr"] for r in rows if r["lr"] > base_lr and r["outcome"] == B.REPRODUCED]
    shown = ", ".join(f"lr {r['lr']:g}: BN {_pct(r['bn_acc'])} / plain {_pct(r['no_bn_acc'])}" for r in rows)
    # only the bands of the rates that decided are printed: the separating ones, else all above the base rate
    decisive = [b for b in bands if any(b.name.startswith(f"lr {x:g}:") for x in hit)] or bands
    res = _claim(
        "batch norm trains at learning rates where the plain network diverges",
        "seed 002 ('allows higher learning rates'); Santurkar et al. 2018", outcome, decisive,
        {"epochs": epochs, "rates": rows, "rates_only_bn_trains": hit, "seeds": list(seeds)},
        f"test accuracy after {epochs} epochs (mean of {len(seeds)} seeds): {shown}"
        + (f"; at lr {', '.join(f'{x:g}' for x in hit)} only batch norm trains (the plain network diverges "
           "or collapses to chance)" if hit else ""),
        t0,
    )
    res.numbers["bands_all_rates"] = {_key(b.name): b.as_dict() for b in bands}
    return res


_INITS_STUDIED = {"0.01": ("normal", 0.01), "1.0": ("normal", 1.0), "xavier": ("xavier", None), "he": ("he", None)}


def _init_run(device: Any, epochs: int) -> Callable[[NormFactory, Split, int], dict[str, dict[str, float]]]:
    def run(f: NormFactory, sp: Split, s: int) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {"bn": {}, "no_bn": {}}
        for name, (init, scale) in _INITS_STUDIED.items():
            p = Protocol(epochs=epochs, init=init, init_scale=scale, seeds=(s,))
            out["bn"][name] = _acc(train(f, sp, p, s, device, label=f"bn-{name}"))
            out["no_bn"][name] = _acc(train(None, sp, p, s, device, label=f"no-bn-{name}"))
        return out

    return run


def _init_study(
    split: Split, norm_factory: NormFactory | None, device: Any, seeds: Sequence[int], epochs: int, twin: bool = True,
) -> dict[str, Any]:
    """Per seed, the test accuracy after ``epochs`` of each initialisation, with and without batch norm."""
    key = ("init-study", epochs)
    run = _init_run(device, epochs)
    runs = _runs(key, norm_factory, split, seeds, device, run)

    def flat(r: dict[str, dict[str, float]]) -> dict[str, float]:
        return {f"{who}.{k}": v for who, d in r.items() for k, v in d.items()}

    return {"runs": runs, "diffs": _twin_differences(key, split, seeds, device, run, flat, twin), "epochs": epochs,
            "seeds": list(seeds)}


def _study_accuracy(study: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {who: {k: _mean(r[who][k] for r in study["runs"]) for k in _INITS_STUDIED} for who in ("bn", "no_bn")}


def _study_diffs(study: dict[str, Any], who: str, f: Callable[[dict[str, float]], float]) -> list[float]:
    """Run-to-run differences of a statistic ``f`` of one network's accuracies, from the study's twin."""
    d = study["diffs"]
    if not d:
        return []
    n = len(next(iter(d.values())))
    out = []
    for j in range(n):
        ref = study["runs"][j][who]
        tw = {k: ref[k] + d[f"{who}.{k}"][j] for k in _INITS_STUDIED}
        out.append(f(tw) - f(ref))
    return out


def claim_init_scales(
    split: Split, norm_factory: NormFactory, device: Any = "cpu", seeds: Sequence[int] = CLAIM_SEEDS,
    epochs: int = 5, study: dict[str, Any] | None = None, twin: bool = True,
) -> ClaimResult:
    """Seed 001: weights of scale 0.01 are too small and of scale 1.0 too large; Xavier and He are right.

    Trains the plain network (no batch norm) for ``epochs`` from N(0, 0.01^2),
    N(0, 1), Xavier (Glorot normal) and He weights.  Statistic per seed: the
    worse of Xavier/He minus the better of the two bad scales.  Reproduced
    when its band (floored by what the test set resolves) lies above 0.  The
    batch-norm runs of the same study are in the numbers too (see
    :func:`claim_bn_init_resilience`).
    """
    t0 = time.perf_counter()
    study = study or _init_study(split, norm_factory, device, seeds, epochs, twin)
    acc = _study_accuracy(study)

    def margin(a: dict[str, float]) -> float:
        return min(a["xavier"], a["he"]) - max(a["0.01"], a["1.0"])

    good = min(acc["no_bn"]["xavier"], acc["no_bn"]["he"])
    band = B.band("plain network: worse good init minus better bad scale", [margin(r["no_bn"]) for r in study["runs"]],
                  0.0, run_differences=_study_diffs(study, "no_bn", margin), floor=_floor(good, split.n_test))
    fmt = lambda d: ", ".join(f"{k} {_pct(v)}" for k, v in d.items())  # noqa: E731
    return _claim(
        "weight scale matters: 0.01 too small, 1.0 too large, Xavier/He right", "seed 001 (initialisation)",
        band.outcome, [band], {"epochs": study["epochs"], "accuracy": acc, "seeds": study["seeds"]},
        f"plain network after {study['epochs']} epochs (mean of {len(study['runs'])} seeds): {fmt(acc['no_bn'])}",
        t0,
    )


def claim_bn_init_resilience(
    split: Split, norm_factory: NormFactory, device: Any = "cpu", seeds: Sequence[int] = CLAIM_SEEDS,
    epochs: int = 5, study: dict[str, Any] | None = None, twin: bool = True,
) -> ClaimResult:
    """Ioffe & Szegedy 2015 (section 3.3): batch norm makes training resilient to the weight scale.

    The same study as :func:`claim_init_scales`, judged for the network with
    batch norm.  Statistic per seed and bad scale (0.01 and 1.0): its accuracy
    minus the worse of Xavier/He.  "Resilient" means a loss the test set cannot
    resolve, so each threshold is minus the binomial bound at the good
    accuracy; reproduced when both bands lie above it.  The paper's own caveat
    applies: a layer's output is invariant to its weight scale, but its weight
    gradient shrinks as 1/scale, so with N(0, 1) weights the effective
    learning rate is far smaller and a short run can fall behind; the numbers
    show which happened.
    """
    t0 = time.perf_counter()
    study = study or _init_study(split, norm_factory, device, seeds, epochs, twin)
    acc = _study_accuracy(study)
    bn, plain = acc["bn"], acc["no_bn"]
    tol = _floor(min(bn["xavier"], bn["he"]), split.n_test)
    bands = []
    for k in ("0.01", "1.0"):
        def d(a: dict[str, float], k: str = k) -> float:
            return a[k] - min(a["xavier"], a["he"])

        bands.append(B.band(f"batch norm: scale {k} minus worse good init", [d(r["bn"]) for r in study["runs"]],
                            -tol, run_differences=_study_diffs(study, "bn", d)))
    outcome = B.all_of(b.outcome for b in bands)
    fmt = lambda d: ", ".join(f"{k} {_pct(v)}" for k, v in d.items())  # noqa: E731
    why = ""
    if bands[1].outcome == B.NOT_REPRODUCED:
        why = ("; with N(0, 1) weights batch norm keeps the activations normalised but the gradients shrink by "
               "the weight scale, so at this learning rate it learns far more slowly")
    return _claim(
        "batch norm makes training resilient to the weight scale", "Ioffe & Szegedy 2015, section 3.3", outcome,
        bands, {"epochs": study["epochs"], "accuracy": acc, "tolerance": tol, "seeds": study["seeds"],
                "rescued": {k: b.outcome for k, b in zip(("0.01", "1.0"), bands)}},
        f"after {study['epochs']} epochs with batch norm: {fmt(bn)}; without: {fmt(plain)}{why}",
        t0,
    )


def claim_deep_sigmoid(
    split: Split, norm_factory: NormFactory, device: Any = "cpu", seeds: Sequence[int] = CLAIM_SEEDS,
    epochs: int = 10, lr: float = 0.1, twin: bool = True,
) -> ClaimResult:
    """Ioffe & Szegedy section 4.1: a 3x100 sigmoid MLP trains faster and better with batch norm.

    The paper's network (three hidden layers of 100 sigmoid units, small
    Gaussian weights, here N(0, 0.01^2) -- the paper does not give the scale --,
    mini-batches of 60) trained for ``epochs`` with SGD at ``lr`` (not stated
    in the paper either; the paper ran 50,000 steps, about 50 epochs of full
    MNIST, so this is the early part of its Figure 1a).  Statistics per seed:
    batch norm's final accuracy minus the plain network's, and the smallest
    such difference over the epochs.  Reproduced when both bands (floored by
    what the test set resolves) lie above 0: better at the end, never behind.
    """
    t0 = time.perf_counter()
    key = ("deep-sigmoid", epochs, lr)
    p = Protocol(hidden=(100, 100, 100), activation="sigmoid", init="normal", init_scale=0.01,
                 batch_size=60, lr=lr, epochs=epochs, seeds=tuple(seeds))

    def run(f: NormFactory, sp: Split, s: int) -> dict[str, Any]:
        b = train(f, sp, p.replace(seeds=(s,)), s, device, label="bn")
        n = train(None, sp, p.replace(seeds=(s,)), s, device, label="no-bn")
        return {"bn": _acc_matrix([b], epochs)[0].tolist(), "no_bn": _acc_matrix([n], epochs)[0].tolist(),
                "e80_bn": b.epochs_to(0.8) if b.ok else None, "e80_no_bn": n.epochs_to(0.8) if n.ok else None,
                "status": b.status}

    def stats(r: dict[str, Any]) -> dict[str, float]:
        d = np.asarray(r["bn"]) - np.asarray(r["no_bn"])
        return {"final": float(d[-1]), "least": float(d.min())}

    runs = _runs(key, norm_factory, split, seeds, device, run)
    diffs = _twin_differences(key, split, seeds, device, run, stats, twin)
    st = [stats(r) for r in runs]
    c_bn = np.mean([r["bn"] for r in runs], axis=0)
    c_plain = np.mean([r["no_bn"] for r in runs], axis=0)
    a_bn, a_plain = float(c_bn[-1]), float(c_plain[-1])
    fl = _floor(a_bn, split.n_test)
    bands = [
        B.band("final accuracy, batch norm minus plain", [x["final"] for x in st], 0.0,
               run_differences=diffs.get("final", ()), floor=fl),
        B.band("least difference over the epochs", [x["least"] for x in st], 0.0,
               run_differences=diffs.get("least", ()), floor=fl),
    ]
    e_bn = olympic_mean(r["e80_bn"] for r in runs)
    e_plain = olympic_mean(r["e80_no_bn"] for r in runs)
    return _claim(
        "a deep sigmoid network trains faster and better with batch norm",
        "Ioffe & Szegedy 2015, section 4.1 (3x100 sigmoid MLP on MNIST)", B.all_of(b.outcome for b in bands), bands,
        {"epochs": epochs, "lr": lr, "batch_size": 60, "final_bn": a_bn, "final_no_bn": a_plain,
         "epochs_to_80_bn": e_bn, "epochs_to_80_no_bn": e_plain, "seeds": list(seeds),
         "curve_bn": c_bn.tolist(), "curve_no_bn": c_plain.tolist()},
        f"after {epochs} epochs (mean of {len(runs)} seeds): with batch norm {_pct(a_bn)}, without {_pct(a_plain)}; "
        f"epochs to 80% {_ep(e_bn)} vs {_ep(e_plain)}",
        t0,
    )


def claim_placement(
    split: Split, norm_factory: NormFactory, device: Any = "cpu", seeds: Sequence[int] = CLAIM_SEEDS,
    epochs: int = 10, twin: bool = True,
) -> ClaimResult:
    """Seed 002: batch norm before the ReLU is customary, but after it works too.

    Trains the seed's network with the norm before and after each ReLU (and
    without batch norm) for ``epochs``.  Statistics per seed (final accuracy:
    mean of the last three epochs): "after" minus "before", which "as well"
    allows to be negative by what the test set cannot resolve (the binomial
    bound), and the worse placement minus the plain network, which must be
    positive (band floored by the test set's resolution).  Reproduced when
    both bands lie on the claim's side.
    """
    t0 = time.perf_counter()
    w = min(3, epochs)
    key = ("placement", epochs)
    p = Protocol(epochs=epochs, seeds=tuple(seeds), final_window=w)

    def run(f: NormFactory, sp: Split, s: int) -> dict[str, Any]:
        q = p.replace(seeds=(s,))
        b = train(f, sp, q, s, device, label="before")
        a = train(f, sp, q.replace(placement="after"), s, device, label="after")
        n = train(None, sp, q, s, device, label="no-bn")
        return {"before": _acc(b, w), "after": _acc(a, w), "no_bn": _acc(n, w), "status": [b.status, a.status]}

    def stats(r: dict[str, Any]) -> dict[str, float]:
        return {"after_minus_before": r["after"] - r["before"],
                "worse_minus_plain": min(r["after"], r["before"]) - r["no_bn"]}

    runs = _runs(key, norm_factory, split, seeds, device, run)
    diffs = _twin_differences(key, split, seeds, device, run, stats, twin)
    st = [stats(r) for r in runs]
    a_b, a_a, a_n = (_mean(r[k] for r in runs) for k in ("before", "after", "no_bn"))
    tol = _floor(a_b, split.n_test)
    bands = [
        B.band("final accuracy, after ReLU minus before", [x["after_minus_before"] for x in st], -tol,
               run_differences=diffs.get("after_minus_before", ())),
        B.band("final accuracy, worse placement minus no batch norm", [x["worse_minus_plain"] for x in st], 0.0,
               run_differences=diffs.get("worse_minus_plain", ()), floor=_floor(min(a_a, a_b), split.n_test)),
    ]
    return _claim(
        "batch norm after the ReLU trains as well as before it", "seed 002", B.all_of(b.outcome for b in bands),
        bands, {"epochs": epochs, "final_before": a_b, "final_after": a_a, "final_no_bn": a_n, "tolerance": tol,
                "seeds": list(seeds)},
        f"after {epochs} epochs (mean of {len(runs)} seeds): before ReLU {_pct(a_b)}, after {_pct(a_a)}, "
        f"no batch norm {_pct(a_n)}",
        t0,
    )


def claim_batch_regularisation(
    split: Split, norm_factory: NormFactory | None, device: Any = "cpu", seeds: Sequence[int] = CLAIM_SEEDS,
    epochs: int = 20, lr: float = 0.1, batch_size: int = 256, ghost_sizes: tuple[int, int] = (16, 256),
    twin: bool = True,
) -> ClaimResult:
    """Seed 004: batch statistics of small mini-batches are noisy, which regularises; large ones less so.

    Isolates batch norm's share: the optimiser's mini-batch is fixed at
    ``batch_size`` (256, lr 0.1, ``epochs`` epochs) and batch norm normalises
    ghost batches of 16 or of 256 rows (:class:`GhostNorm`), so only the
    noise of the statistics differs.  Regularisation is measured as the
    generalisation gap, test loss minus training loss, both in eval mode on
    the whole sets after the last epoch.  Statistic per seed: the gap with
    batch-norm batches of 256 minus the gap with 16 (same seed: same initial
    weights and data order).  Reproduced when its band lies above 0, not
    reproduced when below, inconclusive when it straddles 0 (a crashed or
    diverged run leaves the estimate undefined: inconclusive).  For the
    record (``literal_batch_sizes``) it also trains the batch-norm network
    with ordinary mini-batches of 16 and of 256 for a quarter of the epochs
    at the protocol's lr 0.01; there the number of steps differs 16-fold too,
    so that is not the judged comparison.
    """
    t0 = time.perf_counter()
    small, large = ghost_sizes
    key = ("batch-regularisation", epochs, lr, batch_size, ghost_sizes)
    p = Protocol(epochs=epochs, lr=lr, batch_size=batch_size, eval_train=True, seeds=tuple(seeds))

    def run(f: NormFactory, sp: Split, s: int) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        for gsize in (small, large):
            def factory(n: int, g: int = gsize) -> nn.Module:
                return GhostNorm(f(n), g)

            c = train(factory, sp, p.replace(seeds=(s,)), s, device, label=f"ghost-{gsize}")
            ok = c.ok and bool(c.test_loss) and bool(c.train_eval_loss)
            out[gsize] = {"status": c.status,
                          "gap": c.test_loss[-1] - c.train_eval_loss[-1] if ok else float("nan"),
                          "test_acc": c.test_acc[-1] if ok else float("nan"),
                          "train_acc": c.train_eval_acc[-1] if ok else float("nan")}
        return out

    def stats(r: dict[int, dict[str, Any]]) -> dict[str, float]:
        return {"gap_difference": r[large]["gap"] - r[small]["gap"]}

    runs = _runs(key, norm_factory, split, seeds, device, run)
    diffs = _twin_differences(key, split, seeds, device, run, stats, twin)
    band = B.band(f"generalisation gap, batch norm over {large} minus over {small} rows",
                  [stats(r)["gap_difference"] for r in runs], 0.0, run_differences=diffs.get("gap_difference", ()),
                  fmt="{:.4f}")
    literal: dict[str, dict[str, float | str]] = {}
    for b in (small, large):
        q = Protocol(epochs=max(1, epochs // 4), batch_size=b, eval_train=True, seeds=(seeds[0],))
        f = _reference_factory if norm_factory is None else norm_factory
        c = train(f, split, q, seeds[0], device, label=f"batch-{b}")
        if c.ok:
            literal[f"batch_{b}"] = {
                "epochs": q.epochs, "test_acc": c.test_acc[-1], "train_acc": c.train_eval_acc[-1],
                "gap_loss": c.test_loss[-1] - c.train_eval_loss[-1],
            }
        else:
            literal[f"batch_{b}"] = {"status": c.status, "message": c.message}
    statuses = [r[g]["status"] for r in runs for g in (small, large)]
    complete = all(s == "ok" for s in statuses)
    per = {g: {k: [r[g][k] for r in runs] for k in ("gap", "test_acc", "train_acc")} for g in (small, large)}
    m = {g: {k: _mean(v) for k, v in d.items()} for g, d in per.items()}
    return _claim(
        "small batches regularise through batch norm's noise (less with large batches)", "seed 004", band.outcome,
        [band],
        {"epochs": epochs, "lr": lr, "batch_size": batch_size, "seeds": list(seeds),
         "gap_loss": {g: per[g]["gap"] for g in per}, "test_acc": {g: per[g]["test_acc"] for g in per},
         "train_acc": {g: per[g]["train_acc"] for g in per}, "literal_batch_sizes": literal},
        f"batch of {batch_size}, batch norm over {small} vs {large} rows, {epochs} epochs (mean of {len(runs)} "
        f"seeds): generalisation gap (test - train loss) {m[small]['gap']:.4f} vs {m[large]['gap']:.4f}, test "
        f"accuracy {_pct(m[small]['test_acc'])} vs {_pct(m[large]['test_acc'])}, train accuracy "
        f"{_pct(m[small]['train_acc'])} vs {_pct(m[large]['train_acc'])}" + ("" if complete else f" (runs: {statuses})"),
        t0,
    )


def seed_claims(
    split: Split,
    device: Any = "cpu",
    *,
    norm_factory: NormFactory | None = None,
    protocol: Protocol | None = None,
    only: Iterable[str] | None = None,
    threads: int | None = 1,
    twin: bool = True,
) -> list[ClaimResult]:
    """Run the seed-claims study with ``norm_factory`` (default: the reference batch norm).

    Claims (names for ``only``): ``initial-loss``, ``overfit-batch``,
    ``bn-faster`` (uses ``protocol``, default the full tier on ``split``),
    ``lr-sweep``, ``init-scales``, ``init-resilience`` (one training study
    for both), ``deep-sigmoid``, ``placement``,
    ``batch-regularisation``.  Each returns a :class:`ClaimResult` with its
    outcome (reproduced, not reproduced, inconclusive) and bands; nothing
    raises for a failing norm layer (its runs are reported as crashed or
    diverged).  ``threads`` as for :func:`run_convergence`; ``twin=False``
    skips the twin runs (no run-to-run spread: the bands are narrower).
    """
    f = norm_factory or _reference_factory
    shared: dict[str, Any] = {}

    def init_study() -> dict[str, dict[str, Curve]]:
        if "init" not in shared:
            t = time.perf_counter()
            shared["init"] = _init_study(split, f, device, CLAIM_SEEDS, 5, twin)
            shared["init_seconds"] = time.perf_counter() - t
        return shared["init"]

    studies: dict[str, Callable[[], ClaimResult]] = {
        "initial-loss": lambda: claim_initial_loss(split, f, device, twin=twin),
        "overfit-batch": lambda: claim_overfit_batch(split, f, device, twin=twin),
        "bn-faster": lambda: claim_bn_faster(split, norm_factory, device, protocol, twin=twin),
        "lr-sweep": lambda: claim_lr_sweep(split, f, device, twin=twin),
        "init-scales": lambda: claim_init_scales(split, f, device, study=init_study()),
        "init-resilience": lambda: claim_bn_init_resilience(split, f, device, study=init_study()),
        "deep-sigmoid": lambda: claim_deep_sigmoid(split, f, device, twin=twin),
        "placement": lambda: claim_placement(split, f, device, twin=twin),
        "batch-regularisation": lambda: claim_batch_regularisation(split, f, device, twin=twin),
    }
    names = list(studies) if only is None else list(only)
    unknown = [n for n in names if n not in studies]
    if unknown:
        raise ValueError(f"unknown claim(s) {unknown}; choose from {list(studies)}")
    out = []
    for name in names:
        with torch_threads(threads):
            r = studies[name]()
        r.seconds += shared.pop("init_seconds", 0.0)  # the shared study counts once, where it ran
        out.append(r)
    return out
