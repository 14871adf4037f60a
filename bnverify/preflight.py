"""Preflight: call the target once per kind of call before the suites, so a broken one is told once.

A target whose constructor rejects its arguments, or that raises or hangs on every call, would
otherwise fail every check with the same message (66 copies of it, after minutes of shrinking)
and could even pass checks that accept an error.  The preflight builds the target and calls it
once per kind of call on a small input (training forward, backward, eval forward for a batch
norm); a step that fails is one failed ``preflight`` check carrying the target's own error, and
the checks that depend on it are reported as not run because of it (skipped with that reason,
never passed).

Only a call that *raises or hangs* fails a step: a call that returns something wrong (a NaN,
a wrong shape) passes the preflight, and the checks say what is wrong with it.  A correct target
therefore never fails a preflight step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ALL = ("*",)


@dataclass(frozen=True)
class Step:
    """One preflight call: what it was, the target's error (None when it answered), what it blocks."""

    name: str
    error: str | None = None
    blocks: tuple[str, ...] = ()
    """Suites that cannot run without this call (``ALL``: every suite)."""

    @property
    def failed(self) -> bool:
        return self.error is not None


def blocked_reason(steps: list[Step], suite: str) -> str | None:
    """Why the checks of ``suite`` are not run, or None when nothing blocks them."""
    for s in steps:
        if s.failed and (s.blocks == ALL or suite in s.blocks):
            return f"not run: preflight {s.name} failed ({_first_line(s.error)})"
    return None


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""


def batchnorm(target: Any, device: str) -> list[Step]:
    """Training forward at the first rank the target runs, then backward, then eval forward."""
    import torch

    from bnverify.adapter import BNConfig
    from bnverify.target import CallAbandoned, NotSupported, TargetError

    if device.startswith("cuda") and not torch.cuda.is_available():
        return []  # every check skips with that reason already
    try:
        ranks = target.supported_ranks(device)
    except TargetError as exc:  # it hung: the watchdog gave up on it, and every later call fails at once
        return [Step("training forward", f"{target.name} hung in its first training forward: {exc}", ALL)]
    if not ranks:
        why = target.probe_rank(2, device) or "no input rank 2-5 runs"
        return [Step("training forward", f"{target.name} cannot be built and called in training mode at any "
                                         f"input rank: {why}", ALL)]
    rank = ranks[0]
    shape = (8, 3) + (3,) * (rank - 2)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=torch.float32)
    dy = torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=torch.float32)
    steps = [Step(f"training forward (rank {rank})")]
    for name, blocks, run in (
        ("backward", ("backward",), lambda inst: (inst.forward(x, training=True, grad=True), inst.backward(dy))),
        ("eval forward", (), lambda inst: inst.forward(x, training=False)),
    ):
        try:
            inst = target.instance(BNConfig(num_features=3, rank=rank, device=device))
            run(inst)
        except NotSupported as exc:
            steps.append(Step(name, None))
            _ = exc  # a feature the target does not offer: the checks skip with that reason
        except TargetError as exc:
            if exc.__cause__ is None and not isinstance(exc, CallAbandoned):
                steps.append(Step(name))  # it answered, wrongly: the checks say what is wrong
            else:
                steps.append(Step(name, str(exc), blocks))
    return steps


def dropout(target: Any, device: str) -> list[Step]:
    """Construct with p=0.5 and call in training and in eval mode."""
    import torch

    from bnverify.target import CallAbandoned, TargetError

    x = torch.ones(4, 100)
    try:
        inst = target.instance(0.5)
        inst.forward(x, training=True)
        inst.forward(x, training=False)
    except TargetError as exc:
        if exc.__cause__ is None and not isinstance(exc, CallAbandoned):
            return [Step("construct and forward")]
        return [Step("construct and forward", str(exc), ALL)]
    return [Step("construct and forward")]
