"""The timed calls: each operation of a batch-norm instance as an ``Arm`` (prepare untimed, run timed).

An instance comes from ``bnverify.instances`` like every suite's; the checks first run each
operation once through the adapter (``BNInstance.forward``/``backward``), which turns a crash,
a hang or a wrong shape into a failed check with the target's own message.  Timing then calls
the target's own object directly -- the module, the function, the numpy pair -- so that the
adapter's guards (a watchdog timer per call, output checks) are not timed:

======================  ==========================================  ==============================
operation               timed                                       untimed ``prepare``
======================  ==========================================  ==============================
``forward_train``       ``module(x)`` under ``no_grad``             ``module.train()``
``backward``            ``y.backward(dy)``                          grads cleared, ``y = module(x)``
``train_step``          ``module(x).backward(dy)``                  grads cleared
``forward_eval``        ``module(x)`` under ``no_grad``             ``module.eval()``
======================  ==========================================  ==============================

(a torch-functional target: its function with the harness's weight, bias and buffers; a
numpy-cs231n target: ``batchnorm_forward``/``batchnorm_backward`` on numpy arrays, the forward
of ``backward`` in ``prepare``).  Other instance types are timed through the adapter itself.

``x`` keeps one leaf tensor (``requires_grad``) across rounds; its ``.grad`` and the
parameters' are set to None before each timed backward, so nothing accumulates.

``copy_arm`` is the roofline: ``out.copy_(x)`` into an ``out = torch.empty_like(x)`` allocated
once.  A fresh ``torch.empty_like(x).copy_(x)`` per call was measured and rejected as a
*bandwidth*: on the CPU torch has no caching allocator, and a 16 MiB allocation is often fresh
memory from the kernel (glibc trims the heap above twice its mmap threshold), so the call was
mostly page faults -- median 5.7 ms against 1.4 ms for the same copy into a kept buffer on the
development machine (minimum 1.5 ms: the faults come and go).  The batch norms allocate their
outputs as a layer does, and that cost stays in their times.  On a GPU the caching allocator
makes the two forms the same.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from bnverify.adapter import BNInstance, Cs231nInstance, NotSupported, TorchFunctionalInstance, TorchModuleInstance
from bnverify.bench.roofline import OPS
from bnverify.bench.timers import Arm


def copy_arm(x: torch.Tensor, name: str = "copy") -> Arm:
    """The roofline arm: a copy of ``x`` into a tensor allocated once (``2 E s`` bytes)."""
    out = torch.empty_like(x)
    return Arm(name, lambda: out.copy_(x))


def op_arm(inst: BNInstance, op: str, x: torch.Tensor, dy: torch.Tensor, name: str) -> tuple[Arm, list[torch.Tensor]]:
    """``op`` of ``inst`` as an arm named ``name``, and the tensors whose ``.grad`` a repeated call must clear."""
    if op not in OPS:
        raise ValueError(f"unknown operation {op!r}; choose from {', '.join(OPS)}")
    if isinstance(inst, TorchModuleInstance):
        return _module_arm(inst.module, op, x, dy, name)
    if isinstance(inst, TorchFunctionalInstance):
        return _functional_arm(inst, op, x, dy, name)
    if isinstance(inst, Cs231nInstance):
        return _cs231n_arm(inst, op, x, dy, name), []
    return _adapter_arm(inst, op, x, dy, name), []


def _clear(tensors: list[torch.Tensor]) -> None:
    for t in tensors:
        t.grad = None


def _module_arm(module: torch.nn.Module, op: str, x: torch.Tensor, dy: torch.Tensor,
                name: str) -> tuple[Arm, list[torch.Tensor]]:
    if op in ("forward_train", "forward_eval"):
        training = op == "forward_train"

        def fwd() -> Any:
            with torch.no_grad():
                return module(x)

        return Arm(name, fwd, prepare=lambda: module.train(training)), []
    leaf = x.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
    grads = [leaf, *(p for p in module.parameters() if p.requires_grad)]
    if op == "backward":
        held: dict[str, torch.Tensor] = {}

        def prepare() -> None:
            module.train(True)
            _clear(grads)
            with torch.enable_grad():
                held["y"] = module(leaf)

        def bwd() -> None:
            held.pop("y").backward(dy)

        return Arm(name, bwd, prepare=prepare), grads

    def step() -> None:
        with torch.enable_grad():
            module(leaf).backward(dy)

    def prepare_step() -> None:
        module.train(True)
        _clear(grads)

    return Arm(name, step, prepare=prepare_step), grads


def _functional_arm(inst: TorchFunctionalInstance, op: str, x: torch.Tensor, dy: torch.Tensor,
                    name: str) -> tuple[Arm, list[torch.Tensor]]:
    fn, cfg = inst.fn, inst.cfg
    rm, rv = inst.running_mean, inst.running_var
    grad = op in ("backward", "train_step")
    w = None if inst.weight is None else inst.weight.detach().clone().requires_grad_(grad)
    b = None if inst.bias is None else inst.bias.detach().clone().requires_grad_(grad)
    training = op != "forward_eval" or rm is None
    if not grad:
        def fwd() -> Any:
            with torch.no_grad():
                return fn(x, rm, rv, w, b, training, cfg.momentum, cfg.eps)

        return Arm(name, fwd), []
    leaf = x.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
    grads = [t for t in (leaf, w, b) if t is not None]
    call: Callable[[], torch.Tensor] = lambda: fn(leaf, rm, rv, w, b, True, cfg.momentum, cfg.eps)
    if op == "backward":
        held: dict[str, torch.Tensor] = {}

        def prepare() -> None:
            _clear(grads)
            with torch.enable_grad():
                held["y"] = call()

        return Arm(name, lambda: held.pop("y").backward(dy), prepare=prepare), grads

    def step() -> None:
        with torch.enable_grad():
            call().backward(dy)

    return Arm(name, step, prepare=lambda: _clear(grads)), grads


def _cs231n_arm(inst: Cs231nInstance, op: str, x: torch.Tensor, dy: torch.Tensor, name: str) -> Arm:
    xn = x.detach().cpu().numpy()
    dn = dy.detach().cpu().numpy().astype(xn.dtype)
    p = inst.bn_param

    def mode(m: str) -> Callable[[], None]:
        return lambda: p.__setitem__("mode", m)

    if op == "forward_train":
        return Arm(name, lambda: inst.fwd(xn, inst.gamma, inst.beta, p), prepare=mode("train"))
    if op == "forward_eval":
        return Arm(name, lambda: inst.fwd(xn, inst.gamma, inst.beta, p), prepare=mode("test"))
    bwd = getattr(inst, "bwd", None)
    if bwd is None:
        raise NotSupported(f"{inst.target.name} has no batchnorm_backward: nothing to time for {op}")
    if op == "backward":
        held: dict[str, Any] = {}

        def prepare() -> None:
            p["mode"] = "train"
            held["cache"] = inst.fwd(xn, inst.gamma, inst.beta, p)[1]

        return Arm(name, lambda: bwd(dn, held.pop("cache")), prepare=prepare)

    def step() -> Any:
        _, cache = inst.fwd(xn, inst.gamma, inst.beta, p)
        return bwd(dn, cache)

    return Arm(name, step, prepare=mode("train"))


def _adapter_arm(inst: BNInstance, op: str, x: torch.Tensor, dy: torch.Tensor, name: str) -> Arm:
    """Any other instance: through the adapter (its guards are timed too)."""
    if op in ("forward_train", "forward_eval"):
        return Arm(name, lambda: inst.forward(x, training=op == "forward_train"))
    if op == "backward":
        return Arm(name, lambda: inst.backward(dy), prepare=lambda: inst.forward(x, training=True, grad=True))

    def step() -> Any:
        inst.forward(x, training=True, grad=True)
        return inst.backward(dy)

    return Arm(name, step)


def validate(inst: BNInstance, op: str, x: torch.Tensor, dy: torch.Tensor) -> None:
    """Run ``op`` once through the adapter: a crash, a hang or a wrong shape raises ``TargetError``;
    an operation the target does not offer (a numpy module without a backward) ``NotSupported``."""
    from bnverify.adapter import TargetError

    if op == "forward_eval":
        inst.forward(x, training=True)  # running statistics as a trained layer has them
        inst.forward(x, training=False)
        return
    if op == "forward_train":
        inst.forward(x, training=True)
        return
    inst.forward(x, training=True, grad=True)
    grads = inst.backward(dy)
    if tuple(grads.dx.shape) != tuple(x.shape):
        raise TargetError(f"{inst.target.name} backward returned dx of shape {tuple(grads.dx.shape)} "
                          f"for input {tuple(x.shape)}")
