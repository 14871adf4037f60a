"""What the ``bench`` suite times: the grid of shapes and dtypes per device, and how long per case.

CPU: a ResNet-like 64x64x32x32 activation (16 MiB in float32), a small 32x32x16x16 one (1 MiB)
and a 4096x256 BatchNorm1d input (4 MiB; the only rank a numpy-cs231n target without the
spatial functions offers).  GPU adds 256x64x56x56 (ResNet-50's first stage at batch 256,
51 M elements) in float16 and float32: large enough that L2 cannot hold it and the timings are
of HBM.  Each case is timed for at most ``budget_s`` after warm-up, in at least ``min_rounds``
rounds, stopping early when every median's 95% CI half-width is below ``max_noise``.

The suite reads these at run time (``cases(device)``, ``policy(device)``), so a test can time
a smaller grid for less time by replacing them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bnverify.bench.timers import Policy


@dataclass(frozen=True)
class BenchCase:
    """One input shape and dtype."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def id(self) -> str:
        return "x".join(str(d) for d in self.shape) + "-" + str(self.dtype).replace("torch.", "")


CPU_GRID: tuple[BenchCase, ...] = (
    BenchCase((64, 64, 32, 32), torch.float32),
    BenchCase((32, 32, 16, 16), torch.float32),
    BenchCase((4096, 256), torch.float32),
)
GPU_GRID: tuple[BenchCase, ...] = CPU_GRID + (
    BenchCase((256, 64, 56, 56), torch.float16),
    BenchCase((256, 64, 56, 56), torch.float32),
)
CPU_POLICY = Policy(max_noise=0.02, min_rounds=10, max_rounds=200, budget_s=1.0, warmup_rounds=2)
GPU_POLICY = Policy(max_noise=0.02, min_rounds=20, max_rounds=1000, budget_s=2.0, warmup_rounds=5, check_every=10)


def is_cuda(device: str) -> bool:
    return str(device).startswith("cuda")


def cases(device: str) -> tuple[BenchCase, ...]:
    return GPU_GRID if is_cuda(device) else CPU_GRID


def policy(device: str) -> Policy:
    return GPU_POLICY if is_cuda(device) else CPU_POLICY
