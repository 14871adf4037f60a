"""Training runs: one network, one seed, one :class:`Curve`; and the cache of the built-in networks' curves.

:func:`train` trains the seed's network with any norm layer and never raises (a crash or a
divergence is recorded on the curve); :func:`call_guard` routes a target's work through a guard
(the suites' ``--bn-timeout`` watchdog); :func:`torch_threads` pins the intra-op threads;
:func:`cached_curve` and :func:`reference_curves` train the reference, twin and no-batch-norm
networks once per process, since they do not depend on the target.  ``train(optimizer=...)`` takes an
optimizer factory (``params -> torch.optim.Optimizer``; default: the protocol's plain SGD), which the
optimizer convergence suite uses to train the seed's network with the target optimizer.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bnverify.convergence.network import BUILTIN_FACTORIES, NormFactory, build_mlp
from bnverify.convergence.protocol import (
    _STREAM_DATA,
    _STREAM_GLOBAL,
    Protocol,
    _derive_seed,
)
from bnverify.mnist import Split

#: ``params -> torch.optim.Optimizer``: builds the optimizer a training run steps with.
OptimizerFactory = Callable[[Sequence[nn.Parameter]], torch.optim.Optimizer]


@dataclass
class Curve:
    """One training run: per-epoch measurements (index 0 is epoch 1).

    ``status`` is "ok", "diverged" (a non-finite loss or output) or "crashed"
    (the norm layer raised); ``message`` says what and where, and
    ``stopped_epoch`` the epoch it happened in.  ``train_acc`` is the running
    accuracy on the training batches (train mode); ``train_eval_*`` are
    eval-mode figures on the whole training set (only with
    ``Protocol.eval_train``).  ``initial_loss`` is the loss of the first
    mini-batch before any update; ``initial_test_acc`` the test accuracy of the
    untrained network.
    """

    label: str
    seed: int
    device: str
    n_test: int
    num_classes: int
    test_acc: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    train_eval_acc: list[float] = field(default_factory=list)
    train_eval_loss: list[float] = field(default_factory=list)
    epoch_time_s: list[float] = field(default_factory=list)
    initial_loss: float = float("nan")
    initial_test_acc: float = float("nan")
    status: str = "ok"
    message: str = ""
    stopped_epoch: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def chance(self) -> float:
        return 1.0 / max(self.num_classes, 1)

    def final_accuracy(self, window: int = 5) -> float:
        """Mean test accuracy of the last ``window`` epochs; chance for a crashed or diverged run."""
        if not self.ok or not self.test_acc:
            return self.chance
        return float(np.mean(self.test_acc[-max(1, window):]))

    def epochs_to(self, target: float) -> float | None:
        """Epochs until the test accuracy first reaches ``target`` (``None``: never).

        Interpolated linearly between the two evaluations that bracket the
        crossing (epoch 0 is the untrained network), which resolves finer
        than the one-epoch evaluation interval.
        """
        return _epochs_to([self.initial_test_acc, *self.test_acc], target)


def _epochs_to(accs: Sequence[float], target: float) -> float | None:
    """Interpolated epochs until ``accs`` (index 0: the untrained network) first reaches ``target``."""
    for e in range(1, len(accs)):
        if accs[e] >= target:
            prev = accs[e - 1]
            if not math.isfinite(prev) or prev >= target or accs[e] == prev:
                return float(e)
            return e - 1 + (target - prev) / (accs[e] - prev)
    return None


@contextlib.contextmanager
def _deterministic(device: torch.device) -> Iterator[None]:
    """cuDNN deterministic for the run (restored after); CPU kernels here are deterministic."""
    if device.type != "cuda":
        yield
        return
    old = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = old


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Use ``n`` intra-op CPU threads inside the block (``None``: leave the setting alone).

    Measured on the 2-core machine while other jobs kept it busy (load
    average 7-9): the seed's network ran about 0.2 s an epoch with one thread
    and 2.4-2.9 s with two, OpenMP's threads spinning against each other.
    """
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


_GUARDS: list[Callable[[Callable[[], Any]], Any]] = []


@contextlib.contextmanager
def call_guard(guard: Callable[[Callable[[], Any]], Any]) -> Iterator[None]:
    """Inside the block, :func:`train` runs each piece of a norm layer's work as ``guard(fn)``.

    The pieces: building the network, each training step (forward, backward,
    update) and each evaluation.  The convergence suites pass the target's
    watchdog (``--bn-timeout``), so a norm layer that hangs stops its run as
    "crashed" instead of hanging the session.  Runs of the built-in networks
    (reference, twin, no batch norm) are never guarded: they are not the
    target, and a target that hung must not take them down with it.
    """
    _GUARDS.append(guard)
    try:
        yield
    finally:
        _GUARDS.pop()


def _unguarded(fn: Callable[[], Any]) -> Any:
    return fn()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _describe_exc(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= 400 else text[:397] + "..."


@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int) -> tuple[float, float, bool]:
    """(accuracy, mean loss, all outputs finite) in eval mode."""
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    loss = torch.zeros((), dtype=torch.float64, device=x.device)
    finite = torch.ones((), dtype=torch.bool, device=x.device)
    for i in range(0, x.shape[0], chunk):
        out = model(x[i : i + chunk])
        yy = y[i : i + chunk]
        finite &= torch.isfinite(out).all()
        correct += (out.argmax(dim=1) == yy).sum()
        loss += F.cross_entropy(out.float(), yy, reduction="sum").double()
    n = x.shape[0]
    return float(correct) / n, float(loss) / n, bool(finite)


def train(
    norm_factory: NormFactory | None,
    split: Split,
    protocol: Protocol,
    seed: int,
    device: str | torch.device = "cpu",
    *,
    label: str = "target",
    optimizer: OptimizerFactory | None = None,
) -> Curve:
    """Train the seed's network with ``norm_factory`` for ``protocol.epochs``; never raises.

    ``optimizer`` builds the optimizer from the model's parameters (a list, in the model's
    order); ``None`` is the seed's: ``torch.optim.SGD`` at ``protocol.lr`` and
    ``protocol.momentum``.  The optimizer is built after the network, inside the forked RNG.

    Deterministic for a given seed: the weights come from :func:`init_weights`,
    the data order from a ``torch.Generator`` seeded from ``seed`` (a
    different stream), and the global torch RNG is forked and seeded for the
    run (so a norm layer that draws random numbers is reproducible too, and the
    caller's RNG state is untouched).  On CUDA, cuDNN is put in deterministic
    mode for the run.

    Each epoch: one pass over the training set in shuffled mini-batches
    (``drop_last``), then test accuracy and loss in eval mode.  A non-finite
    training loss or test output stops the run as "diverged"; an exception
    from anywhere (constructing, forward, backward, eval) stops it as
    "crashed".  Epochs already measured are kept.  Inside :func:`call_guard`,
    a run of a norm layer that is not built in, or of a given ``optimizer``,
    executes each piece of work through the guard (a timeout it raises stops
    the run as "crashed").
    """
    dev = torch.device(device)
    curve = Curve(label=label, seed=int(seed), device=str(dev), n_test=split.n_test, num_classes=split.num_classes)
    builtin = optimizer is None and (
        norm_factory is None or any(norm_factory is f for f in BUILTIN_FACTORIES.values())
    )
    guard = _GUARDS[-1] if _GUARDS and not builtin else _unguarded
    stage = "building the network"
    try:
        data = split.tensors(dev)
    except Exception as exc:  # noqa: BLE001 - the device itself is unusable: not the target's fault, but never raise
        curve.status, curve.message = "crashed", f"moving the data to {dev}: {_describe_exc(exc)}"
        return curve
    fork_devices = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices), _deterministic(dev):
        torch.manual_seed(_derive_seed(seed, _STREAM_GLOBAL))
        try:
            model = guard(lambda: build_mlp(
                norm_factory,
                in_features=split.in_features,
                num_classes=split.num_classes,
                hidden=protocol.hidden,
                activation=protocol.activation,
                placement=protocol.placement,
                init=protocol.init,
                init_scale=protocol.init_scale,
                seed=seed,
            ).to(dev))
            if optimizer is None:
                opt = torch.optim.SGD(model.parameters(), lr=protocol.lr, momentum=protocol.momentum)
            else:
                stage, make_opt = "building the optimizer", optimizer
                opt = guard(lambda: make_opt(list(model.parameters())))
                if not isinstance(opt, torch.optim.Optimizer):
                    raise TypeError(f"the optimizer factory returned {type(opt).__name__}, "
                                    "not a torch.optim.Optimizer")
            gen = torch.Generator().manual_seed(_derive_seed(seed, _STREAM_DATA))
            n = split.n_train
            steps = n // protocol.batch_size
            if steps < 1:
                raise ValueError(f"{n} training examples are fewer than one batch of {protocol.batch_size}")
            stage = "evaluating the untrained network"
            acc0, _, _ = guard(lambda: _evaluate(model, data.x_test, data.y_test, protocol.eval_batch))
            curve.initial_test_acc = acc0
            for epoch in range(1, protocol.epochs + 1):
                curve.stopped_epoch = epoch
                stage = f"training, epoch {epoch}"
                model.train()
                perm = torch.randperm(n, generator=gen).to(dev)
                losses = []
                correct = torch.zeros((), dtype=torch.long, device=dev)
                _sync(dev)
                t0 = time.perf_counter()
                for s in range(steps):
                    idx = perm[s * protocol.batch_size : (s + 1) * protocol.batch_size]
                    xb, yb = data.x_train[idx], data.y_train[idx]

                    def step(xb: torch.Tensor = xb, yb: torch.Tensor = yb) -> tuple[torch.Tensor, torch.Tensor]:
                        out = model(xb)
                        loss = F.cross_entropy(out, yb)
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                        return out, loss

                    out, loss = guard(step)
                    losses.append(loss.detach())
                    correct += (out.detach().argmax(dim=1) == yb).sum()
                _sync(dev)
                curve.epoch_time_s.append(time.perf_counter() - t0)
                loss_t = torch.stack(losses).double()
                bad = ~torch.isfinite(loss_t)
                if epoch == 1:
                    curve.initial_loss = float(loss_t[0])
                if bool(bad.any()):
                    bad_step = int(bad.nonzero()[0, 0]) + 1
                    curve.status = "diverged"
                    curve.message = (
                        f"training loss became {float(loss_t[bad_step - 1])} at epoch {epoch}, "
                        f"step {bad_step} of {steps}"
                        + (f" (lr {protocol.lr})" if optimizer is None else "")
                    )
                    return curve
                stage = f"evaluating after epoch {epoch}"
                acc, tl, finite = guard(lambda: _evaluate(model, data.x_test, data.y_test, protocol.eval_batch))
                if not finite:
                    curve.status = "diverged"
                    curve.message = f"non-finite test outputs in eval mode after epoch {epoch}"
                    return curve
                curve.train_loss.append(float(loss_t.mean()))
                curve.train_acc.append(float(correct) / (steps * protocol.batch_size))
                curve.test_acc.append(acc)
                curve.test_loss.append(tl)
                if protocol.eval_train:
                    tra, trl, _ = guard(lambda: _evaluate(model, data.x_train, data.y_train, protocol.eval_batch))
                    curve.train_eval_acc.append(tra)
                    curve.train_eval_loss.append(trl)
            curve.stopped_epoch = None
        except Exception as exc:  # noqa: BLE001 - whatever the norm layer raises stops the run as "crashed"
            curve.status = "crashed"
            curve.message = f"{stage}: {_describe_exc(exc)}"
    return curve


#: Curves of the built-in networks, by (kind, training fields, data fingerprint, seed, device).
_CURVE_CACHE: dict[tuple, Curve] = {}


def cached_curve(kind: str, split: Split, protocol: Protocol, seed: int, device: str | torch.device = "cpu") -> Curve:
    """The curve of a built-in network (``"reference"``, ``"torch"``, ``"no-bn"``), trained once per process.

    Keyed by kind, the protocol's training fields, the data's fingerprint,
    the seed and the device; a copy is returned, so callers may modify it.
    """
    if kind not in BUILTIN_FACTORIES:
        raise ValueError(f"kind must be one of {sorted(BUILTIN_FACTORIES)}, got {kind!r}")
    dev = torch.device(device)
    key = (kind, protocol.training_key(), split.fingerprint(), int(seed), str(dev))
    curve = _CURVE_CACHE.get(key)
    if curve is None:
        curve = train(BUILTIN_FACTORIES[kind], split, protocol, seed, dev, label=kind)
        _CURVE_CACHE[key] = curve
    return copy.deepcopy(curve)


def reference_curves(
    split: Split, protocol: Protocol, device: str | torch.device = "cpu", *, kind: str = "reference"
) -> list[Curve]:
    """Cached curves of a built-in network for every seed of ``protocol``."""
    return [cached_curve(kind, split, protocol, s, device) for s in protocol.seeds]
