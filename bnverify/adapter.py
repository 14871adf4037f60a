"""One internal interface for every kind of batch-norm target (SPEC section 2).

A check never knows which kind it is talking to.  It asks the ``BNTarget``
for an instance with a configuration (``BNConfig``) and drives it through
``BNInstance``: set parameters and running statistics, run forward in
training or eval mode, run backward with an upstream gradient, read
everything back.  Tensors cross the interface as torch tensors; the numpy
kind converts at its edge.

Every call into user code goes through ``Target.call`` (``bnverify.target``):
an exception, a hang, a non-tensor, a wrong shape or a NaN comes back as
``TargetError`` (a failed check, with the target's own message), never as a
traceback from deep inside the harness.  ``NotSupported`` marks a feature the
target does not offer (an input rank, a dtype, a device): the check is
skipped with that reason.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np
import torch

from bnverify.conventions import Convention
from bnverify.target import NotSupported, Target, TargetError, TargetLoadError

__all__ = ["BNConfig", "BNInstance", "BNTarget", "Grads", "NotSupported", "TargetError", "TargetLoadError",
           "functional_signature_matches", "layer_factory"]

@dataclass(frozen=True)
class BNConfig:
    """Constructor arguments of one batch-norm instance, in the target's own convention."""

    num_features: int
    rank: int
    eps: float = 1e-5
    momentum: float | None = 0.1
    affine: bool = True
    track_running_stats: bool = True
    dtype: torch.dtype = torch.float32
    device: str = "cpu"

    def with_(self, **kw: Any) -> BNConfig:
        return replace(self, **kw)


@dataclass
class Grads:
    dx: torch.Tensor
    dgamma: torch.Tensor | None
    dbeta: torch.Tensor | None


# --------------------------------------------------------------------------- instances

class BNInstance(ABC):
    """One constructed batch norm of a target."""

    differentiable: bool = False

    def __init__(self, target: BNTarget, cfg: BNConfig) -> None:
        self.target = target
        self.cfg = cfg

    def call(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run user code; turn any misbehaviour into ``TargetError`` naming ``what``."""
        return self.target.call(what, fn)

    @abstractmethod
    def forward(self, x: torch.Tensor, *, training: bool, grad: bool = False,
                autograd: bool | None = None) -> torch.Tensor:
        """Run forward; with ``grad`` the result can be passed to ``backward``.

        ``autograd``: whether the call runs with autograd on and an input that requires grad, the way
        models train.  Default: on in training mode, off in eval (``torch.no_grad()``, the way models
        infer); a check that must see the caller's own tensor (the no-mutation contract) passes False.
        Ignored by kinds without autograd.
        """

    @abstractmethod
    def backward(self, dout: torch.Tensor) -> Grads:
        """Gradients of ``sum(out * dout)`` for the last forward run with ``grad=True``."""

    @abstractmethod
    def get_params(self) -> tuple[torch.Tensor | None, torch.Tensor | None]: ...

    @abstractmethod
    def set_params(self, gamma: torch.Tensor, beta: torch.Tensor) -> None: ...

    @abstractmethod
    def get_running(self) -> tuple[torch.Tensor, torch.Tensor] | None: ...

    @abstractmethod
    def set_running(self, mean: torch.Tensor, var: torch.Tensor) -> None: ...

    def gradcheck_fn(self) -> tuple[Callable[..., torch.Tensor], tuple[torch.Tensor, ...]] | None:
        """A pure function of (x, gamma, beta) for ``torch.autograd.gradcheck``, or None."""
        return None


def _as_output(target: BNTarget, what: str, out: Any, x: torch.Tensor) -> torch.Tensor:
    if isinstance(out, tuple) and len(out) >= 1 and isinstance(out[0], torch.Tensor):
        raise TargetError(f"{target.name} {what} returned a tuple of {len(out)}; expected one tensor")
    if not isinstance(out, torch.Tensor):
        raise TargetError(f"{target.name} {what} returned {type(out).__name__}; expected a torch.Tensor")
    if tuple(out.shape) != tuple(x.shape):
        raise TargetError(
            f"{target.name} {what} returned shape {tuple(out.shape)} for input {tuple(x.shape)}; "
            "batch norm keeps the input's shape"
        )
    return out


class TorchModuleInstance(BNInstance):
    """An ``nn.Module`` with ``torch.nn.BatchNorm2d``'s constructor; backward through autograd."""

    differentiable = True

    def __init__(self, target: BNTarget, cfg: BNConfig, cls: type) -> None:
        super().__init__(target, cfg)
        kwargs: dict[str, Any] = dict(
            eps=cfg.eps, momentum=cfg.momentum, affine=cfg.affine,
            track_running_stats=cfg.track_running_stats, device=cfg.device, dtype=cfg.dtype,
        )
        self.module = self.call("constructor", lambda: cls(cfg.num_features, **kwargs))
        if not isinstance(self.module, torch.nn.Module):
            raise TargetError(f"{target.name}(...) returned {type(self.module).__name__}, not an nn.Module")
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor, *, training: bool, grad: bool = False,
                autograd: bool | None = None) -> torch.Tensor:
        self.call("train()" if training else "eval()", lambda: self.module.train(training))
        on = grad or (training if autograd is None else autograd)
        xin = x.detach().clone(memory_format=torch.preserve_format).requires_grad_(True) if on else x
        with torch.set_grad_enabled(on):
            out = self.call("forward", lambda: self.module(xin))
        out = _as_output(self.target, "forward", out, x)
        self._last = (xin, out) if grad else None
        return out if grad or not on else out.detach()

    def backward(self, dout: torch.Tensor) -> Grads:
        if self._last is None:
            raise RuntimeError("backward() without a forward(grad=True)")
        xin, out = self._last
        if not out.requires_grad:
            raise TargetError(f"{self.target.name} output does not require grad: it is detached from the input")
        for p in self.module.parameters():
            p.grad = None
        self.call("backward", lambda: out.backward(dout))
        if xin.grad is None:
            raise TargetError(f"{self.target.name} output is not connected to the input in the autograd graph")
        w, b = self.get_params()
        return Grads(xin.grad, None if w is None else w.grad, None if b is None else b.grad)

    def get_params(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        w, b = getattr(self.module, "weight", None), getattr(self.module, "bias", None)
        for name, t in (("weight", w), ("bias", b)):
            if isinstance(t, torch.Tensor):
                self._check_param_shape(name, t)
        return w, b

    def _check_param_shape(self, name: str, t: torch.Tensor) -> None:
        """``weight``/``bias`` of shape ``(C,)`` as in ``torch.nn.BatchNorm2d``; a ``(1, C)`` or ``(1, C, 1, 1)``
        parameter (the textbook shape that broadcasts against the input) is named as such."""
        c = self.cfg.num_features
        shape = tuple(t.shape)
        if shape == (c,):
            return
        if t.numel() == c and len(shape) >= 2 and shape[1] == c:
            raise TargetError(
                f"{self.target.name}.{name} has shape {shape}: parameters kept as (1, C{', 1' * (len(shape) - 2)}) "
                f"rows that broadcast against the input; torch.nn.BatchNorm2d's weight and bias have shape "
                f"(num_features,) = ({c},), which optimizers, state_dict and folding into a Conv/Linear rely on "
                f"(reshape them inside forward instead)")
        raise TargetError(f"{self.target.name}.{name} has shape {shape}; expected (num_features,) = ({c},) as in "
                          "torch.nn.BatchNorm2d")

    def set_params(self, gamma: torch.Tensor, beta: torch.Tensor) -> None:
        w, b = self.get_params()
        if w is None or b is None:
            raise TargetError(f"{self.target.name} has no weight/bias parameters with affine=True")
        with torch.no_grad():
            w.copy_(gamma)
            b.copy_(beta)

    def get_running(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        rm = getattr(self.module, "running_mean", None)
        rv = getattr(self.module, "running_var", None)
        if rm is None or rv is None:
            return None
        return rm, rv

    def set_running(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        run = self.get_running()
        if run is None:
            raise TargetError(f"{self.target.name} has no running_mean/running_var buffers")
        with torch.no_grad():
            run[0].copy_(mean)
            run[1].copy_(var)

    def gradcheck_fn(self) -> tuple[Callable[..., torch.Tensor], tuple[torch.Tensor, ...]] | None:
        w, b = self.get_params()
        module = self.module
        module.train(True)
        if w is None or b is None:
            return (lambda x: module(x)), ()
        names = [n for n, p in module.named_parameters() if p is w or p is b]
        if len(names) != 2:
            return None

        def f(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
            return torch.func.functional_call(module, {names[0]: gamma, names[1]: beta}, (x,))

        return f, (w.detach().clone(), b.detach().clone())


class TorchFunctionalInstance(BNInstance):
    """A function with ``torch.nn.functional.batch_norm``'s signature; the harness owns the state."""

    differentiable = True

    def __init__(self, target: BNTarget, cfg: BNConfig, fn: Callable[..., Any]) -> None:
        super().__init__(target, cfg)
        if cfg.momentum is None:
            raise NotSupported("a torch-functional target takes a float momentum; momentum=None is a module feature")
        self.fn = fn
        kw: dict[str, Any] = {"dtype": cfg.dtype, "device": cfg.device}
        c = cfg.num_features
        self.weight = torch.ones(c, **kw) if cfg.affine else None
        self.bias = torch.zeros(c, **kw) if cfg.affine else None
        self.running_mean = torch.zeros(c, **kw) if cfg.track_running_stats else None
        self.running_var = torch.ones(c, **kw) if cfg.track_running_stats else None
        self._last: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None] | None = None

    def forward(self, x: torch.Tensor, *, training: bool, grad: bool = False,
                autograd: bool | None = None) -> torch.Tensor:
        use_batch = training or self.running_mean is None
        on = grad or (training if autograd is None else autograd)
        xin = x.detach().clone(memory_format=torch.preserve_format).requires_grad_(True) if on else x
        w = None if self.weight is None else self.weight.detach().clone().requires_grad_(on)
        b = None if self.bias is None else self.bias.detach().clone().requires_grad_(on)
        rm, rv = self.running_mean, self.running_var
        with torch.set_grad_enabled(on):
            out = self.call("call", lambda: self.fn(xin, rm, rv, w, b, use_batch, self.cfg.momentum, self.cfg.eps))
        out = _as_output(self.target, "call", out, x)
        self._last = (xin, out, w, b) if grad else None
        return out if grad or not on else out.detach()

    def backward(self, dout: torch.Tensor) -> Grads:
        if self._last is None:
            raise RuntimeError("backward() without a forward(grad=True)")
        xin, out, w, b = self._last
        if not out.requires_grad:
            raise TargetError(f"{self.target.name} output does not require grad: it is detached from the input")
        self.call("backward", lambda: out.backward(dout))
        if xin.grad is None:
            raise TargetError(f"{self.target.name} output is not connected to the input in the autograd graph")
        return Grads(xin.grad, None if w is None else w.grad, None if b is None else b.grad)

    def get_params(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return self.weight, self.bias

    def set_params(self, gamma: torch.Tensor, beta: torch.Tensor) -> None:
        self.weight = gamma.detach().clone()
        self.bias = beta.detach().clone()

    def get_running(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.running_mean is None or self.running_var is None:
            return None
        return self.running_mean, self.running_var

    def set_running(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        self.running_mean = mean.detach().clone()
        self.running_var = var.detach().clone()

    def gradcheck_fn(self) -> tuple[Callable[..., torch.Tensor], tuple[torch.Tensor, ...]] | None:
        fn, cfg = self.fn, self.cfg
        rm = None if self.running_mean is None else self.running_mean.clone()
        rv = None if self.running_var is None else self.running_var.clone()
        if self.weight is None or self.bias is None:
            return (lambda x: fn(x, rm, rv, None, None, True, cfg.momentum, cfg.eps)), ()
        return (
            lambda x, g, b: fn(x, rm, rv, g, b, True, cfg.momentum, cfg.eps),
            (self.weight.detach().clone(), self.bias.detach().clone()),
        )


_NUMPY_DTYPES = {torch.float64: np.float64, torch.float32: np.float32, torch.float16: np.float16}

HALF_NOT_PROMISED = (
    "float16 is not part of the numpy-cs231n contract (the course promises float64 and float32) and is checked "
    "only when asked (--half): numpy keeps float16 sums and sums of squares in float16, which overflow above "
    "65504 for the batches the 16-bit checks draw"
)
NO_BACKWARD = ("the module has no {name}: backward checks are not run (its forward, modes and invariance checks are); "
               "add {name}(dout, cache) -> (dx, dgamma, dbeta) to have them run")


class Cs231nInstance(BNInstance):
    """A cs231n-style numpy module: ``batchnorm_forward``/``batchnorm_backward`` on ``(N, D)`` input.

    The course's contract, not torch's (SPEC section 2):

    * rank-4 input goes to ``spatial_batchnorm_forward``/``_backward`` when the module has them;
      a stub (the template returns ``(None, None)`` until the student reaches it, or raises
      ``NotImplementedError``) is "not implemented": ``NotSupported`` with that reason, so rank-4
      checks are skipped and named after the spatial function.  A spatial function that raises
      anything else is implemented and wrong: the check fails with its error;
    * float64 and float32 are promised; float16 only when the target asks for it
      (``BNTarget.half_requested``): numpy accumulates float16 sums in float16;
    * ``batchnorm_backward`` is called after a training forward; after a test-mode forward only
      where the target supports it (``BNTarget.probe_eval_backward``);
    * a module without ``batchnorm_backward`` gets its forward checked; backward raises ``NotSupported``;
    * gradients in float64 for float32 input (numpy's promotion) are accepted and noted
      (``promoted``), never a failed dtype contract.

    Running statistics live in ``bn_param``, which the target updates.
    """

    def __init__(self, target: BNTarget, cfg: BNConfig, obj: Any) -> None:
        super().__init__(target, cfg)
        if cfg.device != "cpu":
            raise NotSupported("a numpy-cs231n target runs on the CPU only")
        if cfg.dtype not in _NUMPY_DTYPES:
            raise NotSupported(f"numpy has no {cfg.dtype}")
        if cfg.dtype == torch.float16 and not target.half_requested:
            raise NotSupported(HALF_NOT_PROMISED)
        if cfg.rank == 2:
            self.fwd_name, self.bwd_name = "batchnorm_forward", "batchnorm_backward"
        elif cfg.rank == 4 and hasattr(obj, "spatial_batchnorm_forward"):
            self.fwd_name, self.bwd_name = "spatial_batchnorm_forward", "spatial_batchnorm_backward"
        else:
            extra = " or 4-D input to spatial_batchnorm_forward" if cfg.rank == 4 else ""
            raise NotSupported(
                f"numpy-cs231n kind: batchnorm_forward takes (N, D) input{extra}; rank {cfg.rank} is not offered"
            )
        self.fwd = getattr(obj, self.fwd_name)
        self.bwd = getattr(obj, self.bwd_name, None)
        if not cfg.track_running_stats:
            raise NotSupported("numpy-cs231n kind always keeps running statistics in bn_param")
        if cfg.momentum is None:
            raise NotSupported("numpy-cs231n kind takes a float momentum")
        npdt = _NUMPY_DTYPES[cfg.dtype]
        c = cfg.num_features
        self.npdt = npdt
        self.gamma = np.ones(c, dtype=npdt)
        self.beta = np.zeros(c, dtype=npdt)
        self.bn_param: dict[str, Any] = {
            "mode": "train", "eps": cfg.eps, "momentum": cfg.momentum,
            "running_mean": np.zeros(c, dtype=npdt), "running_var": np.ones(c, dtype=npdt),
        }
        self._cache: Any = None
        self._x: torch.Tensor | None = None
        self._mode = "train"
        self.promoted: str | None = None

    def _stub(self, what: str) -> NotSupported:
        return NotSupported(f"{what} is not implemented (the course template's stub): the rank-4 checks, which go to "
                            "the spatial functions, are not run")

    def forward(self, x: torch.Tensor, *, training: bool, grad: bool = False,
                autograd: bool | None = None) -> torch.Tensor:
        xn = x.detach().cpu().numpy()
        self.bn_param["mode"] = "train" if training else "test"
        name = self.fwd_name
        try:
            res = self.call(name, lambda: self.fwd(xn, self.gamma, self.beta, self.bn_param))
        except TargetError as exc:
            if self.cfg.rank == 4 and isinstance(exc.__cause__, NotImplementedError):
                raise self._stub(f"{name} (raises NotImplementedError)") from None
            raise
        if self.cfg.rank == 4 and (res is None or (isinstance(res, tuple) and len(res) >= 1 and res[0] is None)):
            raise self._stub(f"{name} (returns {res!r})")
        if not (isinstance(res, tuple) and len(res) == 2):
            raise TargetError(f"{self.target.name} {name} returned {type(res).__name__}; expected (out, cache)")
        out, cache = res
        if out is None:
            raise TargetError(f"{self.target.name} {name} returned out=None: it is not implemented (the template "
                              "leaves out as None until its TODO is filled in)")
        if not isinstance(out, np.ndarray):
            raise TargetError(f"{self.target.name} {name} returned out of type {type(out).__name__}; expected numpy.ndarray")
        if out.dtype not in (np.float16, np.float32, np.float64):
            raise TargetError(f"{self.target.name} {name} returned dtype {out.dtype}")
        t = torch.from_numpy(np.array(out, copy=True))
        t = _as_output(self.target, name, t, x)
        self._cache, self._x, self._mode = cache, x, self.bn_param["mode"]
        return t

    def backward(self, dout: torch.Tensor) -> Grads:
        if self._x is None:
            raise RuntimeError("backward() without a forward")
        bwd = self.bwd
        if bwd is None:
            raise NotSupported(NO_BACKWARD.format(name=self.bwd_name))
        dn = dout.detach().cpu().numpy()
        name = self.bwd_name
        res = self.call(name, lambda: bwd(dn, self._cache))
        if self.cfg.rank == 4 and (res is None or (isinstance(res, tuple) and len(res) >= 1 and res[0] is None)):
            raise self._stub(f"{name} (returns {res!r})")
        if not (isinstance(res, tuple) and len(res) == 3):
            raise TargetError(f"{self.target.name} {name} returned {type(res).__name__}; expected (dx, dgamma, dbeta)")
        outs = []
        for gname, a in zip(("dx", "dgamma", "dbeta"), res):
            if not isinstance(a, np.ndarray):
                raise TargetError(f"{self.target.name} {name} returned {gname} of type {type(a).__name__}")
            outs.append(torch.from_numpy(np.array(a, copy=True)))
        dx, dg, db = outs
        c = self.cfg.num_features
        for gname, g in (("dgamma", dg), ("dbeta", db)):
            if tuple(g.shape) != (c,) and g.numel() == c and g.dim() >= 2 and g.shape[1] == c:
                raise TargetError(
                    f"{self.target.name} {name} returned {gname} of shape {tuple(g.shape)} for gamma and beta of shape "
                    f"({c},): the course's layers.py gives gamma, beta and their gradients shape (D,); a sum with "
                    "keepdims=True (or parameters kept as (1, D) rows) gives (1, D): sum over axis 0 without keepdims")
        if tuple(dx.shape) != tuple(self._x.shape):
            raise TargetError(f"{self.target.name} {name} returned dx of shape {tuple(dx.shape)} for input {tuple(self._x.shape)}")
        if dx.dtype != self._x.dtype and self._x.dtype == torch.float32 and dx.dtype == torch.float64:
            self.promoted = (f"{name} returns float64 gradients for float32 input (numpy promotes float32 with "
                             "float64 arrays such as np.ones((N, D))); accepted for the numpy-cs231n kind, whose "
                             "course never asks for a gradient dtype")
        return Grads(dx, dg, db)

    def get_params(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return torch.from_numpy(self.gamma), torch.from_numpy(self.beta)

    def set_params(self, gamma: torch.Tensor, beta: torch.Tensor) -> None:
        self.gamma = gamma.detach().cpu().numpy().astype(self.npdt)
        self.beta = beta.detach().cpu().numpy().astype(self.npdt)

    def get_running(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        rm, rv = self.bn_param.get("running_mean"), self.bn_param.get("running_var")
        if not isinstance(rm, np.ndarray) or not isinstance(rv, np.ndarray):
            raise TargetError(f"{self.target.name} left bn_param running statistics that are not arrays")
        return torch.from_numpy(np.array(rm)), torch.from_numpy(np.array(rv))

    def set_running(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        self.bn_param["running_mean"] = mean.detach().cpu().numpy().astype(self.npdt)
        self.bn_param["running_var"] = var.detach().cpu().numpy().astype(self.npdt)


# --------------------------------------------------------------------------- targets

_TORCH_BN_BY_RANK = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d, 5: torch.nn.BatchNorm3d}


@dataclass
class BNTarget(Target):
    """A loaded batch-norm target: how to build instances of it, and what it supports."""

    convention: Convention
    by_rank: dict[int, type] | None = None  # the ``torch`` alias: a class per input rank
    half_requested: bool = False
    """numpy-cs231n: float16 checks run only when asked (``HALF_NOT_PROMISED``)."""
    _rank_probe: dict[int, str | None] = field(default_factory=dict, repr=False)
    _eval_backward_probe: dict[int, str | None] = field(default_factory=dict, repr=False)
    _mode_source: dict[str, str] = field(default_factory=dict, repr=False)
    _dtype_probe: dict[torch.dtype, str | None] = field(default_factory=dict, repr=False)

    def instance(self, cfg: BNConfig) -> BNInstance:
        """Construct one batch norm; raises ``NotSupported`` or ``TargetError``."""
        if cfg.device.startswith("cuda") and not torch.cuda.is_available():
            raise NotSupported("CUDA is not available on this machine")
        if self.kind == "torch-module":
            cls = self.obj
            if self.by_rank is not None:
                if cfg.rank not in self.by_rank:
                    raise NotSupported(f"no torch.nn.BatchNorm class for rank {cfg.rank}")
                cls = self.by_rank[cfg.rank]
            return TorchModuleInstance(self, cfg, cls)
        if self.kind == "torch-functional":
            return TorchFunctionalInstance(self, cfg, self.obj)
        if self.kind == "numpy-cs231n":
            return Cs231nInstance(self, cfg, self.obj)
        raise NotSupported(f"kind {self.kind!r} is not a batch norm")  # pragma: no cover - the family has 3 kinds

    def probe_rank(self, rank: int, device: str = "cpu") -> str | None:
        """None if the target runs a training forward at this rank, else why not (its own message)."""
        if rank not in self._rank_probe:
            self._rank_probe[rank] = self._probe(rank, torch.float32, device)
        return self._rank_probe[rank]

    def probe_dtype(self, dtype: torch.dtype, rank: int, device: str = "cpu") -> str | None:
        """None if the target accepts ``dtype`` at ``rank``, else why not."""
        if dtype not in self._dtype_probe:
            self._dtype_probe[dtype] = self._probe(rank, dtype, device)
        return self._dtype_probe[dtype]

    def _probe(self, rank: int, dtype: torch.dtype, device: str) -> str | None:
        shape = (4, 3) + (3,) * (rank - 2)
        try:
            inst = self.instance(BNConfig(num_features=3, rank=rank, dtype=dtype, device=device))
            x = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
            inst.forward(x.to(dtype=dtype, device=device), training=True)
        except NotSupported as exc:
            return str(exc)
        except TargetError as exc:
            if self.watchdog.hung:
                raise
            if exc.__cause__ is None:
                return None  # it ran and returned something wrong: supported, and the checks will say what
            if self.kind == "numpy-cs231n" and rank == 4:
                return None  # an implemented spatial function that raises is wrong, not "rank 4 not offered"
            return str(exc)
        return None

    def probe_eval_backward(self, rank: int = 2) -> str | None:
        """numpy-cs231n: None if ``batchnorm_backward`` accepts the cache of a test-mode forward, else why not.

        The course calls the backward only after a training forward, and solutions leave the test-mode
        cache as ``None``; a backward that raises on it is not offered.  One that returns (right or
        wrong) is checked.  Other kinds: always None (autograd handles eval).
        """
        if self.kind != "numpy-cs231n":
            return None
        if rank not in self._eval_backward_probe:
            shape = (4, 3) + (3,) * (rank - 2)
            why: str | None = None
            try:
                inst = self.instance(BNConfig(num_features=3, rank=rank, dtype=torch.float64))
                x = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
                inst.forward(x, training=False)
                inst.backward(torch.ones_like(x))
            except NotSupported as exc:
                why = str(exc)
            except TargetError as exc:
                if self.watchdog.hung:
                    raise
                if exc.__cause__ is not None:
                    why = ("the course calls batchnorm_backward only after a training forward; backward after a "
                           f"test-mode forward is not part of its contract and this target does not support it ({exc})")
            self._eval_backward_probe[rank] = why
        return self._eval_backward_probe[rank]

    def probe_mode_source(self, device: str = "cpu") -> str:
        """What chooses training or inference behaviour in a torch-module target: ``"flag"`` (``.train()`` /
        ``.eval()``, as torch does), ``"grad"`` (``torch.is_grad_enabled()``, the textbook pattern of Dive into
        Deep Learning), ``"always-train"``, ``"always-eval"`` or ``"unknown"``.  Other kinds: ``"flag"``
        (the harness passes the mode).

        Two calls on a batch whose statistics are far from the running ones (mean 5, variance 4 set
        beforehand): ``.train()`` under ``torch.no_grad()`` and ``.eval()`` with autograd on; each output is
        classified by the statistics it was normalised with.
        """
        if self.kind != "torch-module":
            return "flag"
        if device not in self._mode_source:
            self._mode_source[device] = self._probe_mode_source(device)
        return self._mode_source[device]

    def _probe_mode_source(self, device: str) -> str:
        ranks = self.supported_ranks(device)
        if not ranks:
            return "unknown"
        rank = ranks[0]
        shape = (8, 3) + (2,) * (rank - 2)
        x = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        dims = [0, *range(2, rank)]
        view = (1, 3) + (1,) * (rank - 2)
        batch_ref = (x - x.mean(dims).reshape(view)) / torch.sqrt(x.var(dims, unbiased=False).reshape(view) + 1e-5)
        run_ref = (x - 5.0) / math.sqrt(4.0 + 1e-5)

        def classify(training: bool, grad_on: bool) -> str:
            try:
                inst = self.instance(BNConfig(num_features=3, rank=rank, dtype=torch.float64, device=device))
                assert isinstance(inst, TorchModuleInstance)
                inst.set_running(torch.full((3,), 5.0, dtype=torch.float64, device=device),
                                 torch.full((3,), 4.0, dtype=torch.float64, device=device))
                out = inst.forward(x.to(device), training=training, autograd=grad_on).detach().cpu()
            except (NotSupported, TargetError, AssertionError):
                return "?"
            if torch.allclose(out, batch_ref, atol=1e-4):
                return "train"
            if torch.allclose(out, run_ref, atol=1e-4):
                return "eval"
            return "?"

        train_nograd, eval_grad = classify(True, False), classify(False, True)
        return {("train", "eval"): "flag", ("eval", "train"): "grad", ("train", "train"): "always-train",
                ("eval", "eval"): "always-eval"}.get((train_nograd, eval_grad), "unknown")

    @property
    def has_backward(self) -> bool:
        """False for a numpy-cs231n module without ``batchnorm_backward`` (forward-only)."""
        return self.kind != "numpy-cs231n" or callable(getattr(self.obj, "batchnorm_backward", None))

    def supported_ranks(self, device: str = "cpu") -> list[int]:
        return [r for r in (2, 3, 4, 5) if self.probe_rank(r, device) is None]


def functional_signature_matches(fn: Any) -> bool:
    """True for a callable whose parameters are those of ``torch.nn.functional.batch_norm``."""
    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return False
    want = ["input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"]
    return params[: len(want)] == want or (len(params) >= 8 and params[1:3] == want[1:3])


# --------------------------------------------------------------------------- the target as a layer

class _FunctionalBatchNorm(torch.nn.Module):
    """A torch-functional target as a layer: the harness owns parameters and buffers."""

    def __init__(self, fn: Callable[..., Any], num_features: int, eps: float, momentum: float,
                 device: str, dtype: torch.dtype) -> None:
        super().__init__()
        self.fn, self.eps, self.momentum = fn, eps, momentum
        self.weight = torch.nn.Parameter(torch.ones(num_features, device=device, dtype=dtype))
        self.bias = torch.nn.Parameter(torch.zeros(num_features, device=device, dtype=dtype))
        self.register_buffer("running_mean", torch.zeros(num_features, device=device, dtype=dtype))
        self.register_buffer("running_var", torch.ones(num_features, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x, self.running_mean, self.running_var, self.weight, self.bias, self.training,
                       self.momentum, self.eps)


class _Cs231nFunction(torch.autograd.Function):
    """Autograd bridge to a numpy ``batchnorm_forward``/``batchnorm_backward`` pair."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, layer: Any) -> torch.Tensor:
        out, cache = layer.obj.batchnorm_forward(
            x.detach().cpu().numpy(), gamma.detach().cpu().numpy(), beta.detach().cpu().numpy(), layer.bn_param)
        ctx.cache, ctx.layer = cache, layer
        return torch.from_numpy(np.array(out, dtype=np.float32, copy=True))

    @staticmethod
    def backward(ctx: Any, dout: torch.Tensor) -> Any:
        dx, dg, db = ctx.layer.obj.batchnorm_backward(dout.detach().cpu().numpy(), ctx.cache)
        as_t = lambda a: torch.from_numpy(np.array(a, dtype=np.float32, copy=True))  # noqa: E731
        return as_t(dx), as_t(dg), as_t(db), None


class _Cs231nBatchNorm(torch.nn.Module):
    """A numpy-cs231n target as a (CPU, float32) layer for 2-D input."""

    def __init__(self, obj: Any, num_features: int, convention: Convention) -> None:
        super().__init__()
        self.obj = obj
        self.weight = torch.nn.Parameter(torch.ones(num_features))
        self.bias = torch.nn.Parameter(torch.zeros(num_features))
        self.bn_param: dict[str, Any] = {"mode": "train", "eps": convention.default_eps,
                                         "momentum": convention.default_momentum}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.bn_param["mode"] = "train" if self.training else "test"
        return _Cs231nFunction.apply(x, self.weight, self.bias, self)


def layer_factory(target: BNTarget, *, device: str = "cpu", dtype: torch.dtype = torch.float32,
                  rank: int = 2) -> Callable[[int], torch.nn.Module]:
    """``num_features -> nn.Module``: the target as a layer of a network, with its own defaults.

    Used where a target must train inside a model (the convergence suite): modules are built
    with their own default eps and momentum; functional and numpy targets are wrapped with the
    defaults of the target's convention.
    """
    conv = target.convention
    if target.kind == "torch-module":
        cls = target.by_rank[rank] if target.by_rank is not None else target.obj
        return lambda c: cls(c, device=device, dtype=dtype)
    if target.kind == "torch-functional":
        m = conv.default_momentum if conv.momentum_kind == "update_fraction" else 1 - conv.default_momentum
        return lambda c: _FunctionalBatchNorm(target.obj, c, conv.default_eps, m, device, dtype)
    if target.kind == "numpy-cs231n":
        if device != "cpu":
            raise NotSupported("a numpy-cs231n target runs on the CPU only")
        return lambda c: _Cs231nBatchNorm(target.obj, c, conv)
    raise NotSupported(f"kind {target.kind!r} cannot be used as a batch-norm layer")
