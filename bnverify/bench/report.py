"""One measured case as numbers: times, bandwidths, percent of roofline, ratio to native; and the report.

A ``BenchResult`` holds the raw samples of the three interleaved arms (``target``, ``native``:
torch's own batch norm, ``copy``: the roofline) for one operation, shape, dtype and device, and
derives everything else from them with ``bnverify.bench.roofline``:

* ``median_ms``, ``iqr_ms``, ``ci95_half_ms``: the target's median, interquartile range and the
  half-width of the median's 95% CI (``bnverify.bench.stats``);
* ``GBps_minimal`` / ``GBps_two_pass``: minimal / two-pass bytes over the median time;
* ``copy_GBps``: ``2 E s`` over the copy's median -- the roofline of this shape, measured now;
* ``pct_roofline``: ``100 GBps_minimal / copy_GBps``;
* ``ratio_to_native``: target median / native median (above 1: slower than torch's own).

``write_json`` saves every sample (the baseline format of the perf gate, ``bnverify.bench.gate``),
``table`` the console table, ``plot`` bandwidth against tensor size per operation.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from bnverify.bench import roofline
from bnverify.bench.stats import Summary, paired_log_ratios, summarize

FORMAT = "bnverify-bench/1"
"""The ``format`` field of the benchmark JSON."""

TARGET, NATIVE, COPY = "target", "native", "copy"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def dtype_of(name: str) -> torch.dtype:
    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dt


def shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape)


@dataclass
class BenchResult:
    """One operation on one shape and dtype: raw samples (seconds) per arm, and how they were taken."""

    op: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    device: str
    samples: dict[str, list[float]]
    method: str = ""
    stop_reason: str = ""
    flush_bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ derived numbers
    @property
    def traffic(self) -> roofline.Traffic:
        return roofline.traffic(self.op, self.shape, self.dtype)

    def summary(self, arm: str = TARGET) -> Summary:
        return summarize(self.samples[arm])

    @property
    def rounds(self) -> int:
        return min(len(v) for v in self.samples.values())

    @property
    def copy_GBps(self) -> float:
        if COPY not in self.samples:
            return float("nan")
        return roofline.copy_bandwidth(self.shape, self.dtype, self.summary(COPY).median)

    def GBps(self, arm: str = TARGET, *, two_pass: bool = False) -> float:
        t = self.traffic
        return roofline.gbps(t.two_pass if two_pass else t.minimal, self.summary(arm).median)

    def pct_roofline(self, arm: str = TARGET) -> float:
        return roofline.percent_of_roofline(self.GBps(arm), self.copy_GBps)

    @property
    def ratio_to_native(self) -> float:
        if NATIVE not in self.samples:
            return float("nan")
        n = self.summary(NATIVE).median
        return self.summary(TARGET).median / n if n > 0 else float("nan")

    def log_ratios(self) -> list[float]:
        """Per-round ``log(target / native)``: the interleaved pairs the perf gate compares."""
        if NATIVE not in self.samples:
            return []
        return [float(v) for v in paired_log_ratios(self.samples[TARGET], self.samples[NATIVE])]

    @property
    def noise(self) -> float:
        """The largest relative CI half-width of the arms' medians."""
        return max(summarize(v).rel_noise for v in self.samples.values())

    # ------------------------------------------------------------------ output
    def metrics(self) -> dict[str, float]:
        """The check's MLflow metrics."""
        t, t2 = self.summary(TARGET), self.traffic
        m = {
            "median_ms": t.median * 1e3, "iqr_ms": t.iqr * 1e3, "ci95_half_ms": t.ci_half * 1e3,
            "GBps_minimal": self.GBps(), "GBps_two_pass": self.GBps(two_pass=True),
            "pct_roofline": self.pct_roofline(), "copy_GBps": self.copy_GBps, "ratio_to_native": self.ratio_to_native,
            "bytes_minimal": float(t2.minimal), "bytes_two_pass": float(t2.two_pass), "rounds": float(self.rounds),
            "noise_pct": 100 * self.noise,
        }
        if NATIVE in self.samples:
            n = self.summary(NATIVE)
            m.update(native_median_ms=n.median * 1e3, native_iqr_ms=n.iqr * 1e3,
                     native_GBps_minimal=self.GBps(NATIVE), native_pct_roofline=self.pct_roofline(NATIVE))
        if COPY in self.samples:
            m["copy_median_ms"] = self.summary(COPY).median * 1e3
        return {k: v for k, v in m.items() if not (isinstance(v, float) and math.isinf(v))}

    def key(self) -> tuple[str, tuple[int, ...], str]:
        return self.op, tuple(self.shape), dtype_name(self.dtype)

    def label(self) -> str:
        return f"{self.op} {shape_text(self.shape)} {dtype_name(self.dtype)}"

    def to_dict(self) -> dict[str, Any]:
        t = self.traffic
        return {
            "op": self.op, "shape": list(self.shape), "dtype": dtype_name(self.dtype), "device": self.device,
            "elements": t.elements, "bytes_minimal": t.minimal, "bytes_two_pass": t.two_pass,
            "method": self.method, "stop_reason": self.stop_reason, "flush_bytes": self.flush_bytes,
            "rounds": self.rounds,
            "summary": {arm: self.summary(arm).to_dict() for arm in self.samples},
            "metrics": _json_safe(self.metrics()),
            "samples_s": {arm: list(v) for arm, v in self.samples.items()},
            "extra": _json_safe(self.extra),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenchResult:
        return cls(op=d["op"], shape=tuple(int(v) for v in d["shape"]), dtype=dtype_of(d["dtype"]),
                   device=d.get("device", "cpu"), samples={k: [float(x) for x in v] for k, v in d["samples_s"].items()},
                   method=d.get("method", ""), stop_reason=d.get("stop_reason", ""),
                   flush_bytes=int(d.get("flush_bytes", 0)), extra=dict(d.get("extra", {})))


def _json_safe(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


def document(results: Sequence[BenchResult], *, target: str, target_name: str, device: str, device_name: str,
             env: dict[str, Any], gate: Any = None) -> dict[str, Any]:
    """The benchmark JSON: every sample of every case, the environment, and the gate's decisions."""
    return _json_safe({
        "format": FORMAT, "target": target, "target_name": target_name, "device": device, "device_name": device_name,
        "env": env, "results": [r.to_dict() for r in results], "gate": gate,
    })


def write_json(path: str | Path, doc: dict[str, Any]) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(doc, indent=1, allow_nan=False), encoding="utf-8")
    return p


def _f(v: float, fmt: str) -> str:
    return "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)


def table(results: Sequence[BenchResult]) -> str:
    """The console table: one row per case, target beside native, both against the measured roofline."""
    from bnverify.tables import table as tab

    rows = []
    for r in sorted(results, key=lambda r: (roofline.OPS.index(r.op), r.traffic.tensor_bytes, dtype_name(r.dtype))):
        t = r.summary(TARGET)
        n = r.summary(NATIVE) if NATIVE in r.samples else None
        rows.append((
            r.op, shape_text(r.shape), dtype_name(r.dtype),
            f"{t.median * 1e3:.3f} ({t.iqr * 1e3:.3f})",
            "" if n is None else f"{n.median * 1e3:.3f} ({n.iqr * 1e3:.3f})",
            f"{_f(r.GBps(), '.1f')} ({_f(r.GBps(two_pass=True), '.1f')})",
            _f(r.copy_GBps, ".1f"), _f(r.pct_roofline(), ".0f"), _f(r.pct_roofline(NATIVE), ".0f"),
            _f(r.ratio_to_native, ".2f"), f"{r.rounds}", _f(100 * r.noise, ".1f"),
        ))
    return tab(rows, ("op", "shape", "dtype", "target ms (IQR)", "native ms (IQR)", "GB/s min (2-pass)",
                      "copy GB/s", "% roof", "native % roof", "x native", "rounds", "noise %"),
               align=("left", "left", "left", "right", "right", "right", "right", "right", "right", "right",
                      "right", "right"))


def plot(results: Sequence[BenchResult], path: str | Path, *, title: str) -> Path:
    """Bandwidth (minimal bytes) against tensor size per operation: target, native, and the copy roofline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = [op for op in roofline.OPS if any(r.op == op for r in results)]
    cols = 2 if len(ops) > 1 else 1
    rows = max(1, math.ceil(len(ops) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(6.0 * cols, 4.0 * rows), squeeze=False)
    for ax, op in zip(axes.flat, ops):
        rs = sorted((r for r in results if r.op == op), key=lambda r: r.traffic.tensor_bytes)
        mb = [r.traffic.tensor_bytes / 2**20 for r in rs]
        ax.plot(mb, [r.copy_GBps for r in rs], "k:", marker="_", label="copy (roofline)")
        ax.plot(mb, [r.GBps(NATIVE) if NATIVE in r.samples else float("nan") for r in rs], "--", marker="s",
                color="tab:gray", label="torch native")
        ax.plot(mb, [r.GBps() for r in rs], "-", marker="o", color="tab:blue", label="target")
        for r, x in zip(rs, mb):
            ax.annotate(f"{shape_text(r.shape)} {dtype_name(r.dtype)}", (x, r.GBps()), fontsize=6,
                        textcoords="offset points", xytext=(3, 3))
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        ax.set_title(roofline.OP_TITLES[op], fontsize=10)
        ax.set_xlabel("tensor size (MiB)")
        ax.set_ylabel("GB/s at minimal bytes")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(ops):]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p
