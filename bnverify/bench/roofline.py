"""The bytes a batch norm must move, and what a measured time means against them.

Batch norm does a handful of flops per element and is bound by memory traffic, so its
yardstick is bandwidth: ``bytes / time``, against the bandwidth the same device reaches on a
plain copy of the same size into a kept buffer, measured in the same run (``copy_bandwidth``;
``bnverify.bench.ops.copy_arm`` says why the buffer is kept).  A device's
*specified* peak is not used: a copy of a tensor that size is the practical ceiling
(STREAM-like copies reach ~90% of spec on current GPUs; on a shared CPU the spec is meaningless).

Notation: ``E`` elements of activation (``N*C*spatial``), ``s`` bytes per activation element,
``C`` channels, ``c`` bytes per per-channel value (``max(s, 4)``: statistics are kept in at
least float32, as torch's kernels do for 16-bit input).

======================  ==========================================  ==============================
operation               minimal bytes (what any kernel must move)    two-pass bytes (a plain kernel)
======================  ==========================================  ==============================
``forward_train``       read x, write y: ``2 E s``                   stats pass reads x, normalise
                        + ``8 C c``: read gamma, beta; read and       pass reads x again and writes
                        write running mean, var; write the saved      y: ``3 E s`` (+ ``8 C c``)
                        mean and inverse std
``backward``            read x (or xhat), dy; write dx: ``3 E s``     reduction pass reads x, dy
                        + ``5 C c``: read gamma, saved mean and       (sum dy, sum dy xhat);
                        inverse std; write dgamma, dbeta              elementwise pass reads x, dy
                                                                      and writes dx: ``5 E s``
                                                                      (+ ``5 C c``)
``train_step``          forward then backward: ``5 E s`` + ``13 C c`` ``8 E s`` + ``13 C c``
``forward_eval``        read x, write y: ``2 E s``                   the same: no statistics to
                        + ``4 C c``: read gamma, beta, running        compute
                        mean, var
``copy``                read x, write y: ``2 E s``                   --
======================  ==========================================  ==============================

Why these counts: the training forward needs the channel's mean and variance before it can
write any output, so a kernel either reads ``x`` twice (two passes, ``3 E s``) or keeps a
channel's slice on chip between the two phases (persistent or Welford kernels, ``2 E s``).  The
backward needs two channel reductions (``sum dy``, ``sum dy xhat``) before ``dx``; reading ``x``
and ``dy`` once for the reductions and once for ``dx`` is ``5 E s``, keeping them on chip
``3 E s``.  Reading ``x`` or a saved ``xhat`` costs the same ``E s``.  The per-channel terms are
``O(C)`` and negligible for every shape the bench suite times (below 0.1%), but they are counted,
so that the numbers can be checked by hand.  The same counts are used by NVIDIA Fuser's
normalisation benchmarks (``norm_fwd_iobytes``/``norm_bwd_iobytes``) and the Triton layer-norm
tutorial (``2*numel*element_size`` forward, ``3*...`` backward).

A ``train_step`` is forward then backward as two kernels: the backward must read ``x`` again,
so a step moves the sum of the two (a fused step that never writes ``y`` is not a batch norm
layer).

Derived quantities (``report``): ``GB/s = bytes / seconds / 1e9`` (decimal GB);
``percent of roofline = 100 * GBps_minimal / copy_GBps`` -- equivalently ``100 * t_roof / t``
with ``t_roof = minimal bytes / copy bandwidth``, the time the operation would take if it moved
its minimal bytes as fast as a copy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

OPS = ("forward_train", "backward", "train_step", "forward_eval")
"""The timed operations, in report order."""

OP_TITLES = {
    "forward_train": "training forward",
    "backward": "backward",
    "train_step": "training step (forward + backward)",
    "forward_eval": "eval forward",
    "copy": "copy (roofline)",
}

# (minimal, two-pass) multiples of E*s, and of C*c, per operation
_ELEMENT_PASSES = {
    "forward_train": (2, 3),
    "backward": (3, 5),
    "train_step": (5, 8),
    "forward_eval": (2, 2),
    "copy": (2, 2),
}
_CHANNEL_VALUES = {"forward_train": 8, "backward": 5, "train_step": 13, "forward_eval": 4, "copy": 0}


def element_size(dtype: torch.dtype) -> int:
    """Bytes per element of ``dtype``."""
    return torch.empty((), dtype=dtype).element_size()


def channel_value_size(dtype: torch.dtype) -> int:
    """Bytes per per-channel value: statistics and parameters kept in at least float32."""
    return max(element_size(dtype), 4)


@dataclass(frozen=True)
class Traffic:
    """Bytes an operation moves for one shape and dtype."""

    op: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    minimal: int
    two_pass: int

    @property
    def elements(self) -> int:
        return math.prod(self.shape)

    @property
    def tensor_bytes(self) -> int:
        """Bytes of one activation tensor (``E s``): the size the plots put on their x axis."""
        return self.elements * element_size(self.dtype)


def traffic(op: str, shape: Sequence[int], dtype: torch.dtype) -> Traffic:
    """Minimal and two-pass bytes of ``op`` (``OPS`` or ``"copy"``) on input ``shape`` in ``dtype``."""
    if op not in _ELEMENT_PASSES:
        raise ValueError(f"unknown operation {op!r}; choose from {', '.join((*OPS, 'copy'))}")
    shape = tuple(int(d) for d in shape)
    if len(shape) < 2:
        raise ValueError(f"batch norm input has rank >= 2 (N, C, ...), got shape {shape}")
    e, s = math.prod(shape), element_size(dtype)
    cc = shape[1] * channel_value_size(dtype) * _CHANNEL_VALUES[op]
    lo, hi = _ELEMENT_PASSES[op]
    return Traffic(op=op, shape=shape, dtype=dtype, minimal=lo * e * s + cc, two_pass=hi * e * s + cc)


def gbps(nbytes: float, seconds: float) -> float:
    """Effective bandwidth in GB/s (1e9 bytes per second); NaN for a non-positive time."""
    if not seconds > 0:
        return float("nan")
    return nbytes / seconds / 1e9


def copy_bandwidth(shape: Sequence[int], dtype: torch.dtype, copy_seconds: float) -> float:
    """The roofline: GB/s of a copy of ``x`` (``out.copy_(x)``, ``2 E s`` bytes) timed at ``copy_seconds``."""
    return gbps(traffic("copy", shape, dtype).minimal, copy_seconds)


def percent_of_roofline(achieved_gbps: float, roofline_gbps: float) -> float:
    """``100 * achieved / roofline``; NaN when the roofline is unknown."""
    if not roofline_gbps > 0 or math.isnan(achieved_gbps):
        return float("nan")
    return 100.0 * achieved_gbps / roofline_gbps


def roofline_seconds(op: str, shape: Sequence[int], dtype: torch.dtype, roofline_gbps: float) -> float:
    """The time ``op`` would take moving its minimal bytes at the copy bandwidth."""
    if not roofline_gbps > 0:
        return float("nan")
    return traffic(op, shape, dtype).minimal / (roofline_gbps * 1e9)
