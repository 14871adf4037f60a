"""The convergence plot: test accuracy and training loss per epoch, as a PNG.

matplotlib is imported when a plot is drawn, not when the engine is imported.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from bnverify.convergence.training import Curve
from bnverify.convergence.verdict import ConvergenceVerdict, _mean_series, _pct

_COLOURS = {"target": "tab:blue", "reference": "tab:green", "no-bn": "tab:orange", "nobn": "tab:orange"}


def plot_curves(
    data: ConvergenceVerdict | Mapping[str, Sequence[Curve]] | Sequence[Curve],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
) -> str:
    """Write a PNG of test accuracy and training loss per epoch; returns the path.

    Given a verdict: each group's mean (thin lines for each seed), the
    reference's noise band shaded and the target accuracy dashed.  Given
    curves (a mapping label -> curves, or a flat list grouped by ``label``):
    each group's mean and seeds.  Uses matplotlib's Agg canvas directly, so
    it neither needs a display nor touches pyplot's global state.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    verdict: ConvergenceVerdict | None = None
    if isinstance(data, ConvergenceVerdict):
        verdict = data
        groups: dict[str, list[Curve]] = {  # drawn in this order: the target on top
            "reference": verdict.reference, "no-bn": verdict.nobn, "target": verdict.target,
        }
    elif isinstance(data, Mapping):
        groups = {k: list(v) for k, v in data.items()}
    else:
        groups = {}
        for c in data:
            groups.setdefault(c.label, []).append(c)
    groups = {k: v for k, v in groups.items() if v}

    fig = Figure(figsize=(11, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax_acc, ax_loss = fig.subplots(1, 2)
    for i, (label, curves) in enumerate(groups.items()):
        colour = _COLOURS.get(label, f"C{(i + 3) % 10}")
        style = "--" if label == "target" else "-"
        n_ep = max((len(c.test_acc) for c in curves), default=0)
        for c in curves:
            if c.test_acc:
                ax_acc.plot(
                    range(1, len(c.test_acc) + 1), [100 * a for a in c.test_acc], color=colour, lw=0.6, alpha=0.35
                )
            if c.train_loss:
                ax_loss.plot(range(1, len(c.train_loss) + 1), c.train_loss, color=colour, lw=0.6, alpha=0.35)
        mean_acc = _mean_series([c.test_acc for c in curves], n_ep)
        if mean_acc:
            bad = sum(not c.ok for c in curves)
            note = f" ({bad} of {len(curves)} stopped)" if bad else ""
            ax_acc.plot(range(1, n_ep + 1), [100 * a for a in mean_acc], color=colour, lw=2, ls=style,
                        label=f"{label}{note}")
        mean_loss = _mean_series([c.train_loss for c in curves], n_ep)
        if mean_loss:
            ax_loss.plot(range(1, n_ep + 1), mean_loss, color=colour, lw=2, ls=style, label=label)
    if verdict is not None and verdict.band_low:
        ep = verdict.epochs
        ax_acc.fill_between(
            ep, [100 * x for x in verdict.band_low], [100 * x for x in verdict.band_high],
            color=_COLOURS["reference"], alpha=0.18, lw=0, label="reference band",
        )
        ax_acc.axhline(100 * verdict.protocol.target_accuracy, color="grey", ls=":", lw=1,
                       label=f"target accuracy {_pct(verdict.protocol.target_accuracy, 0)}")
        means = verdict.reference_mean + verdict.target_mean + verdict.nobn_mean
        top = max([100 * x for x in verdict.band_high + means])
        ax_acc.set_ylim(max(0.0, 100 * min(means) - 3), min(100.0, top + 1))
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("test accuracy (%)")
    ax_acc.grid(alpha=0.3)
    ax_acc.legend(loc="lower right", fontsize=8)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss (mean over the epoch)")
    ax_loss.set_yscale("log")
    ax_loss.grid(alpha=0.3, which="both")
    ax_loss.legend(loc="upper right", fontsize=8)
    if title is None and verdict is not None:
        title = f"convergence: {verdict.outcome.upper()}"
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(os.fspath(path), format="png")
    return os.fspath(path)
