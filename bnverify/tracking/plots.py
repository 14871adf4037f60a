"""Per-check series as one overlaid plot: a check that records several per-epoch series
(target, reference and no-BN accuracy; their training losses) gets them drawn on shared
axes, ``plots/series/<suite>/<check>.png`` on the parent run, beside the metric series
MLflow charts one by one.  Checks that attach a plot of their own are left to it.

matplotlib is imported only when a series exists, with the non-interactive Agg backend.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

from bnverify.results import CheckResult, RunSummary
from bnverify.tracking.config import safe_artifact_part

#: Series whose names contain one of these go on the lower axes (they are not accuracies
#: and live on another scale).
_LOSS_WORDS = ("loss", "nll", "error")


def _own_plot(r: CheckResult) -> bool:
    artifacts = r.details.get("artifacts")
    return isinstance(artifacts, dict) and any(str(k).lower().endswith((".png", ".svg", ".pdf")) for k in artifacts)


def _plottable(values: Sequence[object]) -> list[float]:
    out: list[float] = []
    for v in values:
        try:
            out.append(float(v))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            out.append(math.nan)
    return out


def series_plot(r: CheckResult) -> bytes | None:
    """A PNG with every series of ``r`` overlaid (losses on a second panel); None when the
    check has fewer than two points to draw."""
    series = {k: _plottable(v) for k, v in sorted(r.series.items()) if len(v) >= 2}
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    losses = {k: v for k, v in series.items() if any(w in k.lower() for w in _LOSS_WORDS)}
    others = {k: v for k, v in series.items() if k not in losses}
    panels = [p for p in (others, losses) if p]
    fig = Figure(figsize=(7.5, 3.4 * len(panels)), dpi=100)
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, panel in zip(axes, panels):
        for name, values in panel.items():
            style = "--" if "band" in name else "-"
            ax.plot(range(1, len(values) + 1), values, style, label=name, linewidth=1.5)
        ax.set_xlabel("step (epoch)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small", loc="best")
    axes[0].set_title(f"{r.suite}/{r.check}: {r.outcome}"[:90], fontsize="medium")
    # fixed margins: tight_layout measures every text and costs more than the drawing
    fig.subplots_adjust(left=0.09, right=0.98, top=1 - 0.35 / fig.get_figheight(),
                        bottom=0.5 / fig.get_figheight(), hspace=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def series_plots(summary: RunSummary) -> dict[str, bytes]:
    """``{artifact name: PNG}`` for every check with series and no plot of its own."""
    out: dict[str, bytes] = {}
    for r in summary.results:
        if not r.series or _own_plot(r):
            continue
        png = series_plot(r)
        if png is None:
            continue
        name = f"plots/series/{safe_artifact_part(r.suite)}/{safe_artifact_part(r.check or r.nodeid)}.png"
        n = 2
        while name in out:
            name = name.removesuffix(".png").rsplit("~", 1)[0] + f"~{n}.png"
            n += 1
        out[name] = png
    return out
