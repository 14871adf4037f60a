"""Seed 001's six-layer study with any initialiser: how each layer's activations spread, tanh and ReLU.

The seed draws the histograms of the hidden activations of a six-layer feed-forward network for
``0.01 * randn`` (they collapse to 0), ``1.00 * randn`` (tanh saturates at +-1, ReLU explodes),
``randn(fan_in, fan_out) / sqrt(fan_in)`` (Xavier: tanh keeps its spread) and ``/ sqrt(fan_in / 2)``
(He: ReLU keeps its spread).  Here the network is the seed's (and cs231n's): inputs ``N(0, 1)`` of
``BATCH x WIDTH``, ``DEPTH`` bias-free layers of ``WIDTH`` units, ``h = f(h W)``, for ``f`` tanh and ReLU.

The target fills each layer's weight (in its convention's layout, with torch's default keywords);
the reference weights are drawn in float64 from the law the target claims
(``bnverify.reference.initializers``); the seed's four forms are drawn beside them.  The verdict is
``bnverify.tolerances``' six-layer band: per layer and nonlinearity, the target's mean log-std over
``INIT_STUDY_SEEDS`` seeds against the reference's, within the reference's own measured seed-to-seed
spread times a Student quantile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from bnverify import tolerances as tols
from bnverify.families import init as fam
from bnverify.init_check import derive_seed

BATCH, WIDTH, DEPTH = 1000, 500, 6
ACTIVATIONS = ("tanh", "relu")
SEED_FORMS = ("small", "large", "xavier-seed", "he-seed")
HIST_BINS = 60


@dataclass
class Study:
    """Per-layer activation statistics: ``std[name][act]`` and ``mean[name][act]`` are (seeds, DEPTH) arrays."""

    reference: str
    convention: str
    seeds: int
    std: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    mean: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    samples: dict[str, dict[str, list[np.ndarray]]] = field(default_factory=dict)
    """Activations of the first seed, per layer (a subsample), for the histograms."""


def _forward(x: torch.Tensor, weights: list[torch.Tensor], act: str) -> list[torch.Tensor]:
    f = torch.tanh if act == "tanh" else torch.relu
    hs, h = [], x
    for w in weights:
        h = f(h @ w)
        hs.append(h)
    return hs


def _target_weights(target: fam.InitTarget, seed: int) -> list[torch.Tensor]:
    """``DEPTH`` weights filled by the target, as (in, out) float32 matrices."""
    conv = fam.conv_of(target)
    geo = fam.Geometry("study", WIDTH, WIDTH)
    shape = geo.shape(conv.layout)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed) if target.accepts("generator") else None
    out = []
    for _ in range(DEPTH):
        t = torch.empty(shape)
        res = target.fill(t, **({"generator": gen} if gen is not None else {}))
        w = res.out if isinstance(res.out, torch.Tensor) and tuple(res.out.shape) == shape else t
        w = w.detach().to(torch.float32)
        out.append(w.t().contiguous() if conv.layout == "torch" else w)
    return out


def _law_weights(law: Any, seed: int) -> list[torch.Tensor]:
    from bnverify.reference import initializers as ref

    rng = np.random.default_rng(seed)
    return [torch.from_numpy(ref.sample(law, (WIDTH, WIDTH), rng)).to(torch.float32) for _ in range(DEPTH)]


def run_study(target: fam.InitTarget, base_seed: int, seeds: int = tols.INIT_STUDY_SEEDS) -> Study:
    """The network with the target's weights, the reference law's and the seed's four forms, over ``seeds`` seeds."""
    from bnverify.reference import initializers as ref

    conv = fam.conv_of(target)
    shape = fam.Geometry("study", WIDTH, WIDTH).shape(conv.layout)
    law = target.law(shape)
    st = Study(target.reference or "", conv.name, seeds)
    plan: list[tuple[str, int, Any]] = [("target", seeds, None), ("reference", seeds, law)]
    plan += [(name, 1, ref.seed_form(name, (WIDTH, WIDTH), layout="keras")) for name in SEED_FORMS]
    rng = np.random.default_rng(derive_seed(base_seed, "study-subsample"))
    pick = rng.choice(BATCH * WIDTH, size=4000, replace=False)
    for name, n, lw in plan:
        st.std[name] = {a: np.zeros((n, DEPTH)) for a in ACTIVATIONS}
        st.mean[name] = {a: np.zeros((n, DEPTH)) for a in ACTIVATIONS}
        st.samples[name] = {a: [] for a in ACTIVATIONS}
        for s in range(n):
            x = torch.from_numpy(np.random.default_rng(derive_seed(base_seed, "study-x", s)).standard_normal(
                (BATCH, WIDTH))).to(torch.float32)
            ws = _target_weights(target, derive_seed(base_seed, "study-w", s)) if lw is None else \
                _law_weights(lw, derive_seed(base_seed, "study-w", name, s))
            for a in ACTIVATIONS:
                with torch.no_grad():
                    hs = _forward(x, ws, a)
                for k, h in enumerate(hs):
                    h64 = h.to(torch.float64)
                    st.std[name][a][s, k] = float(h64.std())
                    st.mean[name][a][s, k] = float(h64.mean())
                    if s == 0:
                        st.samples[name][a].append(h64.reshape(-1)[torch.from_numpy(pick)].numpy())
    return st


@dataclass
class Band:
    act: str
    layer: int
    target: float
    centre: float
    lo: float
    hi: float

    @property
    def inside(self) -> bool:
        """The target's std lies in the band (a NaN, 0 or infinite std never does)."""
        return math.isfinite(self.target) and self.lo <= self.target <= self.hi


def bands(st: Study) -> list[Band]:
    """Per nonlinearity and layer: the target's geometric-mean std against the reference's band."""
    t = tols.init_study_t(st.seeds, DEPTH * len(ACTIVATIONS))
    out = []
    for a in ACTIVATIONS:
        with np.errstate(divide="ignore", invalid="ignore"):
            lt = np.log(st.std["target"][a])
            lr = np.log(st.std["reference"][a])
        for k in range(DEPTH):
            spread = max(float(np.std(lr[:, k], ddof=1)), tols.INIT_STUDY_FLOOR)
            half = t * spread * math.sqrt(2.0 / st.seeds)
            c = float(np.mean(lr[:, k]))
            tv = float(np.mean(lt[:, k])) if np.all(np.isfinite(lt[:, k])) else math.nan
            out.append(Band(a, k + 1, math.exp(tv) if math.isfinite(tv) else math.nan, math.exp(c),
                            math.exp(c - half), math.exp(c + half)))
    return out


def table(st: Study) -> str:
    """Per-layer std (and mean) of the activations: target, reference with its band, the seed's four forms."""
    bs = {(b.act, b.layer): b for b in bands(st)}
    head = "  ".join(f"{'layer ' + str(k + 1):>10}" for k in range(DEPTH))
    lines = [f"six-layer study (seed 001): inputs N(0, 1) {BATCH} x {WIDTH}, {DEPTH} bias-free layers of {WIDTH}; "
             f"std of each layer's activations (geometric mean over {st.seeds} seeds for the target and the "
             f"reference {st.reference}, {st.convention} convention; one seed for the seed's forms)"]
    for a in ACTIVATIONS:
        lines.append(f"{a:<22}{head}")

        def row(label: str, vals: list[float]) -> str:
            return f"  {label:<20}" + "  ".join(f"{v:>10.4g}" for v in vals)

        gm = {n: np.exp(np.mean(np.log(np.maximum(st.std[n][a], 1e-300)), axis=0)) for n in st.std}
        lines.append(row("target", list(gm["target"])))
        lines.append(row("reference", list(gm["reference"])))
        lines.append(row("  band low", [bs[(a, k + 1)].lo for k in range(DEPTH)]))
        lines.append(row("  band high", [bs[(a, k + 1)].hi for k in range(DEPTH)]))
        lines.append(row("target act. mean", list(np.mean(st.mean["target"][a], axis=0))))
        for n in SEED_FORMS:
            lines.append(row(n, list(gm[n])))
    return "\n".join(lines)


def plot(st: Study, path: str) -> None:
    """Histograms of each layer's activations (target beside reference) and the per-layer std of every form."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(ACTIVATIONS), DEPTH + 1, figsize=(3.0 * (DEPTH + 1), 2.8 * len(ACTIVATIONS)))
    bs = {(b.act, b.layer): b for b in bands(st)}
    for i, a in enumerate(ACTIVATIONS):
        ax = axes[i, 0]
        layers = list(range(1, DEPTH + 1))
        for n, style in (("small", ":"), ("large", ":"), ("xavier-seed", "--"), ("he-seed", "--")):
            ax.plot(layers, np.exp(np.mean(np.log(np.maximum(st.std[n][a], 1e-300)), axis=0)), style, label=n)
        ax.fill_between(layers, [bs[(a, k)].lo for k in layers], [bs[(a, k)].hi for k in layers], color="0.8",
                        label=f"reference band ({st.reference})")
        ax.plot(layers, np.exp(np.mean(np.log(np.maximum(st.std["target"][a], 1e-300)), axis=0)), "k-o", label="target")
        ax.set_yscale("log")
        ax.set_title(f"{a}: std per layer")
        ax.set_xlabel("layer")
        if i == 0:
            ax.legend(fontsize=6)
        for k in range(DEPTH):
            ax = axes[i, k + 1]
            t, r = st.samples["target"][a][k], st.samples["reference"][a][k]
            both = np.concatenate([t, r])
            both = both[np.isfinite(both)]
            lo, hi = (float(both.min()), float(both.max())) if both.size else (-1.0, 1.0)
            if hi <= lo:
                hi = lo + 1e-12
            bins = np.linspace(lo, hi, HIST_BINS)
            ax.hist(r[np.isfinite(r)], bins=bins, alpha=0.5, label="reference")
            ax.hist(t[np.isfinite(t)], bins=bins, alpha=0.5, label="target")
            ax.set_title(f"{a} layer {k + 1}: mean {st.mean['target'][a][0, k]:.2g}, std "
                         f"{st.std['target'][a][0, k]:.2g}", fontsize=7)
            ax.tick_params(labelsize=6)
            if i == 0 and k == 0:
                ax.legend(fontsize=6)
    fig.suptitle(f"six-layer study (seed 001): target vs {st.reference} ({st.convention} convention)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
