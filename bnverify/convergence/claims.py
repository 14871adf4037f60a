"""The seed-claims study: what the seeds and Ioffe & Szegedy (2015) claim about batch norm, tested.

Each ``claim_*`` function trains what its claim needs with a given norm layer and returns a
:class:`ClaimResult` (reproduced or not, with the numbers behind it); :func:`seed_claims` runs
them by name, with the reference batch norm by default.  Nothing here raises for a failing norm
layer: its runs are reported as crashed or diverged.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bnverify.convergence.network import (
    GhostNorm,
    NormFactory,
    _reference_factory,
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
    reference_curves,
    torch_threads,
    train,
)
from bnverify.convergence.verdict import (
    _acc_matrix,
    _binomial_floor,
    _ep,
    _pct,
    compare,
    olympic_mean,
)
from bnverify.mnist import Split


@dataclass
class ClaimResult:
    """One claim of the seeds, tested: ``reproduced`` with the ``numbers`` behind it."""

    claim: str
    source: str
    reproduced: bool
    numbers: dict[str, Any]
    explanation: str
    seconds: float = 0.0


def _claim(
    claim: str, source: str, reproduced: bool, numbers: dict[str, Any], explanation: str, t0: float
) -> ClaimResult:
    return ClaimResult(claim, source, bool(reproduced), numbers, explanation, time.perf_counter() - t0)


def _final(curves: Sequence[Curve], window: int = 1) -> float:
    return float(np.mean([c.final_accuracy(window) for c in curves]))


def _trains(c: Curve) -> str:
    return f"{_pct(c.final_accuracy(1))}" if c.ok else c.status


def claim_initial_loss(
    split: Split, norm_factory: NormFactory, device: Any = "cpu", seeds: Sequence[int] = (0, 1, 2)
) -> ClaimResult:
    """Sanity check: the loss of the untrained network is near ln(10) (uniform predictions).

    Measures the cross-entropy of the first mini-batch before any update, for
    the seed's network with and without batch norm (torch's default init).
    Reproduced when every run is within 10 % of ln(num_classes): the
    cross-entropy of near-zero logits, which a 10 % margin allows to have a
    standard deviation up to about 0.7.
    """
    t0 = time.perf_counter()
    p = Protocol(epochs=1, seeds=tuple(seeds))
    expected = math.log(split.num_classes)
    bn = [train(norm_factory, split, p, s, device, label="bn") for s in seeds]
    plain = [train(None, split, p, s, device, label="no-bn") for s in seeds]
    losses = {"bn": [c.initial_loss for c in bn], "no_bn": [c.initial_loss for c in plain]}
    ok = all(c.ok for c in bn + plain) and all(
        math.isfinite(x) and abs(x - expected) <= 0.1 * expected for v in losses.values() for x in v
    )
    return _claim(
        "initial loss is near ln(10)", "sanity check (cs231n; seed 001's training notes)", ok,
        {"ln_classes": expected, **losses},
        f"first-batch loss with batch norm {np.mean(losses['bn']):.3f}, without {np.mean(losses['no_bn']):.3f}; "
        f"ln {split.num_classes} = {expected:.3f} (within 10 % required)",
        t0,
    )


def claim_overfit_batch(
    split: Split, norm_factory: NormFactory, device: Any = "cpu", seed: int = 0, steps: int = 300, lr: float = 0.1
) -> ClaimResult:
    """Sanity check: the network with batch norm can overfit a single mini-batch of 100 examples.

    Repeats SGD (lr 0.1: the single-batch test asks for memorisation, not the
    protocol's pace) on one fixed batch for ``steps`` steps and measures the
    loss and the train-mode accuracy on it.  Reproduced when the accuracy is
    100 % and the loss has fallen below 1 % of its starting value.
    """
    t0 = time.perf_counter()
    dev = torch.device(device)
    data = split.tensors(dev)
    g = torch.Generator().manual_seed(_derive_seed(seed, _STREAM_DATA))
    idx = torch.randperm(split.n_train, generator=g)[:100].to(dev)
    xb, yb = data.x_train[idx], data.y_train[idx]
    first = last = float("nan")
    acc = 0.0
    status = "ok"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_derive_seed(seed, _STREAM_GLOBAL))
        try:
            model = build_mlp(
                norm_factory, in_features=split.in_features, num_classes=split.num_classes, seed=seed
            ).to(dev)
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
    ok = status == "ok" and acc == 1.0 and math.isfinite(last) and last < 0.01 * first
    return _claim(
        "a single mini-batch can be overfit", "sanity check (cs231n)", ok,
        {"steps": steps, "lr": lr, "loss_first": first, "loss_last": last, "accuracy": acc, "status": status},
        f"after {steps} steps on one batch of 100: loss {first:.3f} -> {last:.4f}, accuracy {_pct(acc)}"
        + ("" if status == "ok" else f" ({status})"),
        t0,
    )


def claim_bn_faster(
    split: Split, norm_factory: NormFactory | None, device: Any = "cpu", protocol: Protocol | None = None
) -> ClaimResult:
    """Seed 002's headline: with batch norm the network reaches the target accuracy several times sooner.

    Runs the full protocol (cached curves when ``norm_factory`` is ``None``,
    i.e. the reference) with and without batch norm.  The seed reports about
    10 epochs to 98 % against "struggling" after 50, so: reproduced when the
    speed-up (olympic means of epochs to the target) is at least 5x, or the
    plain network never reaches the target while batch norm does within a
    fifth of the epochs.
    """
    t0 = time.perf_counter()
    p = protocol or Protocol.for_split(split)
    if norm_factory is None:
        bn = reference_curves(split, p, device)
    else:
        bn = [train(norm_factory, split, p, s, device, label="bn") for s in p.seeds]
    plain = reference_curves(split, p, device, kind="no-bn")
    goal = p.target_accuracy
    e_bn = olympic_mean(c.epochs_to(goal) if c.ok else None for c in bn)
    e_plain = olympic_mean(c.epochs_to(goal) if c.ok else None for c in plain)
    if e_bn is None:
        ok, speed, txt = False, None, f"batch norm itself did not reach {_pct(goal, 0)} in {p.epochs} epochs"
    elif e_plain is None:
        speed = p.epochs / e_bn
        ok = speed >= 5
        txt = f"no batch norm never reached {_pct(goal, 0)} in {p.epochs} epochs: speed-up at least {speed:.1f}x"
    else:
        speed = e_plain / e_bn
        ok = speed >= 5
        txt = f"speed-up {speed:.1f}x"
    return _claim(
        f"batch norm reaches {_pct(goal, 0)} several times sooner", "seed 002 (MNIST, 784-300-50-10)", ok,
        {
            "epochs_to_target_bn": e_bn, "epochs_to_target_no_bn": e_plain, "speedup": speed,
            "final_bn": _final(bn, p.final_window), "final_no_bn": _final(plain, p.final_window),
            "epochs": p.epochs, "target": goal,
        },
        f"epochs to {_pct(goal, 0)} with batch norm {_ep(e_bn)}, without {_ep(e_plain)}; {txt}; accuracy after "
        f"{p.epochs} epochs {_pct(_final(bn, p.final_window))} vs {_pct(_final(plain, p.final_window))}",
        t0,
    )


def claim_lr_sweep(
    split: Split, norm_factory: NormFactory, device: Any = "cpu", seed: int = 0,
    lrs: Sequence[float] = (0.01, 0.1, 0.5, 1.0, 2.0, 5.0), epochs: int = 3, base_lr: float = 0.01,
) -> ClaimResult:
    """Seed 002 / Santurkar et al.: batch norm trains at learning rates where the plain network fails.

    Trains both networks for ``epochs`` at each rate.  A run "trains" when it
    completes without a non-finite loss and ends at least half-way from
    chance to 100 % test accuracy; it "fails" when it diverges (non-finite
    loss) or collapses to within 10 points of chance.  Only rates above the
    protocol's ``base_lr`` count (the claim is about *higher* rates; at the
    base rate the plain network is merely slow).  Reproduced when at some
    such rate batch norm trains and the plain network fails.
    """
    t0 = time.perf_counter()
    chance = 1.0 / split.num_classes
    rows = []
    hit = []
    for lr in lrs:
        p = Protocol(epochs=epochs, lr=lr, seeds=(seed,))
        bn = train(norm_factory, split, p, seed, device, label="bn")
        plain = train(None, split, p, seed, device, label="no-bn")
        bn_trains = bn.ok and bn.final_accuracy(1) >= (1 + chance) / 2
        plain_fails = (not plain.ok) or plain.final_accuracy(1) <= chance + 0.10
        rows.append({"lr": lr, "bn": _trains(bn), "no_bn": _trains(plain),
                     "bn_acc": bn.final_accuracy(1), "no_bn_acc": plain.final_accuracy(1),
                     "bn_status": bn.status, "no_bn_status": plain.status})
        if lr > base_lr and bn_trains and plain_fails:
            hit.append(lr)
    per_rate = ", ".join(f"lr {r['lr']:g}: BN {r['bn']} / plain {r['no_bn']}" for r in rows)
    return _claim(
        "batch norm trains at learning rates where the plain network diverges",
        "seed 002 ('allows higher learning rates'); Santurkar et al. 2018", bool(hit),
        {"epochs": epochs, "rates": rows, "rates_only_bn_trains": hit},
        f"test accuracy after {epochs} epochs: {per_rate}"
        + (
            f"; at lr {', '.join(f'{x:g}' for x in hit)} only batch norm trains (the plain network diverges "
            "or collapses to chance)"
            if hit
            else "; no rate above the protocol's separates them"
        ),
        t0,
    )


_INITS_STUDIED = {"0.01": ("normal", 0.01), "1.0": ("normal", 1.0), "xavier": ("xavier", None), "he": ("he", None)}


def _init_study(
    split: Split, norm_factory: NormFactory, device: Any, seed: int, epochs: int
) -> dict[str, dict[str, Curve]]:
    out: dict[str, dict[str, Curve]] = {"bn": {}, "no_bn": {}}
    for name, (init, scale) in _INITS_STUDIED.items():
        p = Protocol(epochs=epochs, init=init, init_scale=scale, seeds=(seed,))
        out["bn"][name] = train(norm_factory, split, p, seed, device, label=f"bn-{name}")
        out["no_bn"][name] = train(None, split, p, seed, device, label=f"no-bn-{name}")
    return out


def claim_init_scales(
    split: Split, norm_factory: NormFactory, device: Any = "cpu", seed: int = 0, epochs: int = 5,
    study: dict[str, dict[str, Curve]] | None = None,
) -> ClaimResult:
    """Seed 001: weights of scale 0.01 are too small and of scale 1.0 too large; Xavier and He are right.

    Trains the plain network (no batch norm) for ``epochs`` from N(0, 0.01^2),
    N(0, 1), Xavier (Glorot normal) and He weights.  Reproduced when both bad
    scales end below both good inits by more than the test set resolves (the
    binomial floor at 99 %).  The batch-norm runs of the same study are in
    the numbers too (see :func:`claim_bn_init_resilience`).
    """
    t0 = time.perf_counter()
    study = study or _init_study(split, norm_factory, device, seed, epochs)
    acc = {who: {k: c.final_accuracy(1) for k, c in runs.items()} for who, runs in study.items()}
    plain = acc["no_bn"]
    floor = float(_binomial_floor(max(plain.values()), split.n_test, 2.326))
    good = min(plain["xavier"], plain["he"])
    bad = max(plain["0.01"], plain["1.0"])
    ok = bad < good - floor
    fmt = lambda d: ", ".join(f"{k} {_pct(v)}" for k, v in d.items())  # noqa: E731
    return _claim(
        "weight scale matters: 0.01 too small, 1.0 too large, Xavier/He right", "seed 001 (initialisation)", ok,
        {"epochs": epochs, "accuracy": acc, "floor": floor},
        f"plain network after {epochs} epochs: {fmt(plain)} (the bad scales must trail the good ones by more "
        f"than {100 * floor:.1f} points)",
        t0,
    )


def claim_bn_init_resilience(
    split: Split, norm_factory: NormFactory, device: Any = "cpu", seed: int = 0, epochs: int = 5,
    study: dict[str, dict[str, Curve]] | None = None,
) -> ClaimResult:
    """Ioffe & Szegedy 2015 (section 3.3): batch norm makes training resilient to the weight scale.

    The same study as :func:`claim_init_scales`, judged for the network with
    batch norm: reproduced when, at each bad scale (0.01 and 1.0), batch norm
    ends within the test set's resolution of its own Xavier/He result.  The
    paper's own caveat applies: a layer's output is invariant to its weight
    scale, but its weight gradient shrinks as 1/scale, so with N(0, 1)
    weights the effective learning rate is far smaller and a short run can
    fall behind; the numbers show which happened.
    """
    t0 = time.perf_counter()
    study = study or _init_study(split, norm_factory, device, seed, epochs)
    acc = {who: {k: c.final_accuracy(1) for k, c in runs.items()} for who, runs in study.items()}
    bn, plain = acc["bn"], acc["no_bn"]
    good = min(bn["xavier"], bn["he"])
    floor = float(_binomial_floor(good, split.n_test, 2.326))
    rescued = {k: bn[k] >= good - floor for k in ("0.01", "1.0")}
    ok = all(rescued.values())
    fmt = lambda d: ", ".join(f"{k} {_pct(v)}" for k, v in d.items())  # noqa: E731
    why = ""
    if not rescued["1.0"]:
        why = (
            "; with N(0, 1) weights batch norm keeps the activations normalised but the gradients shrink by "
            "the weight scale, so at this learning rate it learns far more slowly"
        )
    return _claim(
        "batch norm makes training resilient to the weight scale", "Ioffe & Szegedy 2015, section 3.3", ok,
        {"epochs": epochs, "accuracy": acc, "floor": floor, "rescued": rescued},
        f"after {epochs} epochs with batch norm: {fmt(bn)}; without: {fmt(plain)}{why}",
        t0,
    )


def claim_deep_sigmoid(
    split: Split, norm_factory: NormFactory, device: Any = "cpu", seeds: Sequence[int] = (0,), epochs: int = 10,
    lr: float = 0.1,
) -> ClaimResult:
    """Ioffe & Szegedy section 4.1: a 3x100 sigmoid MLP trains faster and better with batch norm.

    The paper's network (three hidden layers of 100 sigmoid units, small
    Gaussian weights, here N(0, 0.01^2) -- the paper does not give the scale --,
    mini-batches of 60) trained for ``epochs`` with SGD at ``lr`` (not stated
    in the paper either; the paper ran 50,000 steps, about 50 epochs of full
    MNIST, so this is the early part of its Figure 1a).  Reproduced when batch
    norm ends higher by more than the test set resolves (binomial floor at
    99 %) and is never behind the plain network by more than that at any epoch.
    """
    t0 = time.perf_counter()
    p = Protocol(hidden=(100, 100, 100), activation="sigmoid", init="normal", init_scale=0.01,
                 batch_size=60, lr=lr, epochs=epochs, seeds=tuple(seeds))
    bn = [train(norm_factory, split, p, s, device, label="bn") for s in seeds]
    plain = [train(None, split, p, s, device, label="no-bn") for s in seeds]
    a_bn, a_plain = _final(bn), _final(plain)
    c_bn = _acc_matrix(bn, epochs).mean(axis=0)
    c_plain = _acc_matrix(plain, epochs).mean(axis=0)
    floor = float(_binomial_floor(a_bn, split.n_test, 2.326))
    never_behind = bool(np.all(c_bn >= c_plain - floor))
    ok = all(c.ok for c in bn) and a_bn > a_plain + floor and never_behind
    e_bn = olympic_mean(c.epochs_to(0.8) if c.ok else None for c in bn)
    e_plain = olympic_mean(c.epochs_to(0.8) if c.ok else None for c in plain)
    return _claim(
        "a deep sigmoid network trains faster and better with batch norm",
        "Ioffe & Szegedy 2015, section 4.1 (3x100 sigmoid MLP on MNIST)", ok,
        {"epochs": epochs, "lr": lr, "batch_size": 60, "final_bn": a_bn, "final_no_bn": a_plain,
         "epochs_to_80_bn": e_bn, "epochs_to_80_no_bn": e_plain,
         "curve_bn": c_bn.tolist(), "curve_no_bn": c_plain.tolist()},
        f"after {epochs} epochs: with batch norm {_pct(a_bn)}, without {_pct(a_plain)}; epochs to 80% "
        f"{_ep(e_bn)} vs {_ep(e_plain)}; batch norm {'never' if never_behind else 'at some epoch'} behind",
        t0,
    )


def claim_placement(
    split: Split, norm_factory: NormFactory, device: Any = "cpu", seeds: Sequence[int] = (0, 1, 2), epochs: int = 10
) -> ClaimResult:
    """Seed 002: batch norm before the ReLU is customary, but after it works too.

    Trains the seed's network with the norm before and after each ReLU (and
    without batch norm) for ``epochs`` and judges "after" against "before"
    with :func:`compare` (the same noise band as the convergence suite).
    Reproduced when "after" passes that comparison and both beat the plain
    network's final accuracy.
    """
    t0 = time.perf_counter()
    p = Protocol(epochs=epochs, seeds=tuple(seeds), final_window=min(3, epochs))
    before = [train(norm_factory, split, p, s, device, label="before") for s in seeds]
    after = [train(norm_factory, split, p.replace(placement="after"), s, device, label="after") for s in seeds]
    plain = [train(None, split, p, s, device, label="no-bn") for s in seeds]
    v = compare(after, before, plain, p, target_name="BN after ReLU")
    a_b, a_a, a_n = _final(before, p.final_window), _final(after, p.final_window), _final(plain, p.final_window)
    ok = v.outcome == "pass" and min(a_b, a_a) > a_n
    return _claim(
        "batch norm after the ReLU trains as well as before it", "seed 002", ok,
        {"epochs": epochs, "final_before": a_b, "final_after": a_a, "final_no_bn": a_n,
         "band": [v.final.get("band_low"), v.final.get("band_high")], "comparison": v.outcome},
        f"after {epochs} epochs: before ReLU {_pct(a_b)}, after {_pct(a_a)}, no batch norm {_pct(a_n)}; "
        f"'after' judged against 'before': {v.outcome} ({v.explanation.split(';')[0]})",
        t0,
    )


def claim_batch_regularisation(
    split: Split, norm_factory: NormFactory, device: Any = "cpu", seeds: Sequence[int] = (0, 1), epochs: int = 20,
    lr: float = 0.1, batch_size: int = 256, ghost_sizes: tuple[int, int] = (16, 256),
) -> ClaimResult:
    """Seed 004: batch statistics of small mini-batches are noisy, which regularises; large ones less so.

    Isolates batch norm's share: the optimiser's mini-batch is fixed at
    ``batch_size`` (256, lr 0.1, ``epochs`` epochs) and batch norm normalises
    ghost batches of 16 or of 256 rows (:class:`GhostNorm`), so only the
    noise of the statistics differs.  Regularisation is measured as the
    generalisation gap, test loss minus training loss, both in eval mode on
    the whole sets after the last epoch.  Reproduced when the gap is smaller
    with batch-norm batches of 16 for every seed.  For the record
    (``literal_batch_sizes``) it also trains the batch-norm network with
    ordinary mini-batches of 16 and of 256 for a quarter of the epochs at the
    protocol's lr 0.01; there the number of steps differs 16-fold too, so that
    is not the judged comparison.
    """
    t0 = time.perf_counter()
    small, large = ghost_sizes
    p = Protocol(epochs=epochs, lr=lr, batch_size=batch_size, eval_train=True, seeds=tuple(seeds))
    gaps: dict[int, list[float]] = {small: [], large: []}
    accs: dict[int, list[float]] = {small: [], large: []}
    train_accs: dict[int, list[float]] = {small: [], large: []}
    statuses = []
    for gsize in (small, large):
        def factory(n: int, g: int = gsize) -> nn.Module:
            return GhostNorm(norm_factory(n), g)

        for s in seeds:
            c = train(factory, split, p, s, device, label=f"ghost-{gsize}")
            statuses.append(c.status)
            if c.ok:
                gaps[gsize].append(c.test_loss[-1] - c.train_eval_loss[-1])
                accs[gsize].append(c.test_acc[-1])
                train_accs[gsize].append(c.train_eval_acc[-1])
    literal = {}
    for b in (small, large):
        q = Protocol(epochs=max(1, epochs // 4), batch_size=b, eval_train=True, seeds=(seeds[0],))
        c = train(norm_factory, split, q, seeds[0], device, label=f"batch-{b}")
        if c.ok:
            literal[f"batch_{b}"] = {
                "epochs": q.epochs, "test_acc": c.test_acc[-1], "train_acc": c.train_eval_acc[-1],
                "gap_loss": c.test_loss[-1] - c.train_eval_loss[-1],
            }
        else:
            literal[f"batch_{b}"] = {"status": c.status, "message": c.message}
    complete = all(s == "ok" for s in statuses)
    ok = complete and all(a < b for a, b in zip(gaps[small], gaps[large]))
    mean = lambda xs: float(np.mean(xs)) if xs else float("nan")  # noqa: E731
    return _claim(
        "small batches regularise through batch norm's noise (less with large batches)", "seed 004", ok,
        {"epochs": epochs, "lr": lr, "batch_size": batch_size, "gap_loss": gaps, "test_acc": accs,
         "train_acc": train_accs, "literal_batch_sizes": literal},
        f"batch of {batch_size}, batch norm over {small} vs {large} rows, {epochs} epochs: generalisation gap "
        f"(test - train loss) {mean(gaps[small]):.3f} vs {mean(gaps[large]):.3f}, test accuracy "
        f"{_pct(mean(accs[small]))} vs {_pct(mean(accs[large]))}, train accuracy {_pct(mean(train_accs[small]))} "
        f"vs {_pct(mean(train_accs[large]))}" + ("" if complete else f" (runs: {statuses})"),
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
) -> list[ClaimResult]:
    """Run the seed-claims study with ``norm_factory`` (default: the reference batch norm).

    Claims (names for ``only``): ``initial-loss``, ``overfit-batch``,
    ``bn-faster`` (uses ``protocol``, default the full tier on ``split``),
    ``lr-sweep``, ``init-scales``, ``init-resilience`` (one training study
    for both), ``deep-sigmoid``, ``placement``,
    ``batch-regularisation``.  Each returns a :class:`ClaimResult`; nothing
    raises for a failing norm layer (its runs are reported as crashed or
    diverged).  ``threads`` as for :func:`run_convergence`.  On the embedded
    digits the whole study takes one to two minutes on the 2-core machine.
    """
    f = norm_factory or _reference_factory
    shared: dict[str, Any] = {}

    def init_study() -> dict[str, dict[str, Curve]]:
        if "init" not in shared:
            t = time.perf_counter()
            shared["init"] = _init_study(split, f, device, 0, 5)
            shared["init_seconds"] = time.perf_counter() - t
        return shared["init"]

    studies: dict[str, Callable[[], ClaimResult]] = {
        "initial-loss": lambda: claim_initial_loss(split, f, device),
        "overfit-batch": lambda: claim_overfit_batch(split, f, device),
        "bn-faster": lambda: claim_bn_faster(split, norm_factory, device, protocol),
        "lr-sweep": lambda: claim_lr_sweep(split, f, device),
        "init-scales": lambda: claim_init_scales(split, f, device, study=init_study()),
        "init-resilience": lambda: claim_bn_init_resilience(split, f, device, study=init_study()),
        "deep-sigmoid": lambda: claim_deep_sigmoid(split, f, device),
        "placement": lambda: claim_placement(split, f, device),
        "batch-regularisation": lambda: claim_batch_regularisation(split, f, device),
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
