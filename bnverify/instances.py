"""Building batch-norm instances: the one way the suites and the fingerprint get one from a target.

* ``config(case, device, momentum=...)``: the ``BNConfig`` for a drawn ``Case``;
* ``instance(target, cfg)``: ``target.instance(cfg)``; a ``NotSupported`` target skips the check
  (or, for the fingerprint's probes, is passed on with ``skip_unsupported=False``);
* ``load_params(inst, case, device)``: the case's gamma/beta loaded, and what the instance holds read back;
* ``build(target, case, device, momentum=...)``: the three above, for the common case;
* ``default_instance(target, device, rank, c)``: an instance with the target's *own* defaults
  (``cls(C)``, or a ``bn_param`` without eps/momentum), for measuring them;
* ``running64(inst, what)``: the running statistics it holds, in float64;
* ``require_rank``/``require_dtype``: skip, with the target's own message, what it does not run;
* ``require_backward``: skip the checks that need a backward when the target has none (a forward-only
  numpy-cs231n module), or, with ``eval_mode``, one that does not take a test-mode cache (the course
  calls the backward only after a training forward).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bnverify.adapter import BNConfig, BNInstance, BNTarget, Cs231nInstance, NotSupported, TargetError, TorchModuleInstance
from bnverify.compare import CheckFailure, to_f64
from bnverify.strategies import Case, tensor


def require_rank(target: BNTarget, rank: int, device: str) -> None:
    """Skip (with the target's own message) when the target does not run at this rank."""
    why = target.probe_rank(rank, device)
    if why is not None:
        if not target.supported_ranks(device):
            return  # nothing works at all: let the check run and fail with the target's error
        pytest.skip(f"rank {rank} not supported by the target: {why}")


def require_backward(target: BNTarget, *, eval_mode: bool = False, rank: int = 2) -> None:
    """Skip, with the reason, a check that needs a backward the target does not offer."""
    if not getattr(target, "has_backward", True):
        from bnverify.adapter import NO_BACKWARD

        pytest.skip(NO_BACKWARD.format(name="batchnorm_backward"))
    if eval_mode:
        why = target.probe_eval_backward(rank)
        if why is not None:
            pytest.skip(why)


def require_dtype(target: BNTarget, dtype: torch.dtype, device: str) -> int:
    """A supported rank at which ``dtype`` runs; skips if the target rejects ``dtype``."""
    ranks = target.supported_ranks(device) or [2]
    rank = 4 if 4 in ranks else ranks[0]
    why = target.probe_dtype(dtype, rank, device)
    if why is not None:
        pytest.skip(f"{str(dtype).replace('torch.', '')} not supported by the target: {why}")
    return rank


def config(case: Case, device: str, *, momentum: float | None, track_running_stats: bool = True,
           affine: bool | None = None) -> BNConfig:
    """The ``BNConfig`` for ``case``: its channels, rank, eps, affine flag and dtype (``affine`` overrides)."""
    return BNConfig(
        num_features=case.shape[1], rank=len(case.shape), eps=case.eps, momentum=momentum,
        affine=case.affine if affine is None else affine, track_running_stats=track_running_stats,
        dtype=case.dtype, device=device,
    )


def instance(target: BNTarget, cfg: BNConfig, *, skip_unsupported: bool = True) -> BNInstance:
    """``target.instance(cfg)``; what the target does not support skips the check (a probe gets the
    ``NotSupported`` itself with ``skip_unsupported=False``)."""
    try:
        return target.instance(cfg)
    except NotSupported as exc:
        if not skip_unsupported:
            raise
        pytest.skip(str(exc))


def load_params(inst: BNInstance, case: Case, device: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Load the case's gamma/beta (when affine) and return what the instance holds, in float64."""
    if case.affine:
        assert case.gamma is not None and case.beta is not None
        inst.set_params(tensor(case.gamma, case.dtype, device), tensor(case.beta, case.dtype, device))
    g, b = inst.get_params()
    if case.affine and (g is None or b is None):
        raise TargetError(f"{inst.target.name} has no weight/bias with affine=True")
    return (None if g is None else to_f64(g)), (None if b is None else to_f64(b))


def build(target: BNTarget, case: Case, device: str, *, momentum: float | None, track_running_stats: bool = True,
          affine: bool | None = None) -> tuple[BNInstance, np.ndarray | None, np.ndarray | None]:
    """An instance configured for ``case``, with its gamma/beta loaded; returns it and the gamma/beta it
    actually holds (float64)."""
    inst = instance(target, config(case, device, momentum=momentum, track_running_stats=track_running_stats,
                                   affine=affine))
    gamma, beta = load_params(inst, case, device)
    return inst, gamma, beta


def running64(inst: BNInstance, what: str) -> tuple[np.ndarray, np.ndarray]:
    """The running mean and variance the instance holds, as float64 copies; missing ones fail the check."""
    run = inst.get_running()
    if run is None:
        raise CheckFailure(f"{inst.target.name} has no running_mean/running_var {what} with track_running_stats=True; "
                           "SPEC section 2 requires both buffers")
    return to_f64(run[0]).copy(), to_f64(run[1]).copy()


class _DefaultCtorInstance(TorchModuleInstance):
    """A torch-module instance built as ``cls(num_features)``: every other argument at its default."""

    def __init__(self, target: BNTarget, cfg: BNConfig, cls: type) -> None:
        BNInstance.__init__(self, target, cfg)
        self.module = self.call("constructor", lambda: cls(cfg.num_features))
        if not isinstance(self.module, torch.nn.Module):
            raise TargetError(f"{target.name}(...) returned {type(self.module).__name__}, not an nn.Module")
        self._last = None


def default_instance(target: BNTarget, device: str, rank: int, c: int = 3) -> BNInstance:
    """An instance with the target's own defaults: ``cls(C)``, or a ``bn_param`` without eps/momentum."""
    cfg = BNConfig(num_features=c, rank=rank, device=device)
    if target.kind == "torch-module":
        cls = target.obj
        if target.by_rank is not None:
            cls = target.by_rank[rank]
        return _DefaultCtorInstance(target, cfg, cls)
    if target.kind == "numpy-cs231n":
        inst = target.instance(cfg)
        assert isinstance(inst, Cs231nInstance)
        inst.bn_param.pop("momentum", None)
        inst.bn_param.pop("eps", None)
        return inst
    raise NotSupported(f"kind {target.kind}: eps and momentum are passed on every call; no default to measure")
