"""Convergence engine: does a batch norm train as well as the reference?

A batch norm can pass every numerical check and still train worse.  This
module runs seed 002's MNIST experiment on any batch norm: the 784-300-50-10
MLP with ReLU, batch norm before each ReLU and bias-free linear layers, plain
SGD at lr 0.01 with mini-batches of 100, trained three ways with the same
initial weights, the same data order and the same seeds:

* with the **target** batch norm,
* with the **reference** batch norm (``bnverify.reference.batchnorm_torch.BatchNorm``),
* **without** batch norm (the same network with biases, as in the seed).

:func:`train` produces one :class:`Curve` (test accuracy, test loss, train
loss per epoch; epoch times) and never raises: a target that throws or
produces non-finite values stops the run, which is marked ``crashed`` or
``diverged`` with the message.  :func:`compare` turns the curves into a
:class:`ConvergenceVerdict`; :func:`run_convergence` does both, reusing
reference and no-batch-norm curves from an in-process cache, since they do
not depend on the target.  :func:`plot_curves` writes the PNG and
:func:`seed_claims` runs the opt-in study of the seeds' claims.  Inside
:func:`call_guard` every piece of a non-built-in norm layer's work runs
through a guard (the suites pass the target's ``--bn-timeout`` watchdog);
:meth:`Protocol.for_suite` is the suites' protocol.

The statistics (see :func:`compare` for the exact formulas)
-----------------------------------------------------------
*Noise band.*  For every epoch, the reference's accuracy across seeds has a
mean ``mu`` and a seed-to-seed standard deviation ``s_seed``; a *twin* run
(the same seed trained with a second correct batch norm, ``torch.nn.BatchNorm1d``)
measures the run-to-run variation that rounding alone causes, ``s_run``
(``var(twin - reference) = 2 s_run^2``).  With ``n_r`` reference and ``n_t``
target seeds the band is ``mu +/- h``,

    h = max( t_{conf, n_r - 1} * sqrt(s_seed^2 + s_run^2) * sqrt(1/n_r + 1/n_t),
             z_conf * sqrt(mu (1 - mu) / n_test) ),

the one-sided ``conf`` (default 99 %) bound of a two-sample t-test on the
mean of the target's seeds, floored by the binomial standard error of an
accuracy measured on ``n_test`` examples: no band is narrower than what the
test set can resolve, so it never collapses to zero.

*Verdict.*  The target fails when (any of): a run crashed or diverged; its
final accuracy (mean of the last ``final_window`` epochs, averaged over
seeds: a single epoch is too noisy) lies below the band; more than one of its
runs never reaches the target accuracy (MLPerf: "invalid if there is more than
one non-converging run"); or its epochs-to-target (olympic mean: drop the
fastest and the slowest run, as MLPerf does) exceeds the reference's by more
than the same t-bound on the reference's epochs-to-target spread, floored by
the time the reference's mean curve takes to climb through the accuracy
floor (and never less than the one-epoch evaluation interval).  Training
*better* than the band is reported, not failed.

*Bug impact.*  When the target fails: the reference's final accuracy minus
the target's, in percentage points (a crashed or diverged run scores chance,
``1/num_classes``); when it fails only on speed, the accuracy deficit at the
epoch at which the reference reaches the target accuracy, if that is larger.

*Speed-up.*  Olympic-mean epochs-to-target without batch norm divided by the
reference's.  When the plain network does not converge (more than one of its
runs never reaches the target), the figure is a lower bound, ``epochs / reference``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bnverify.mnist import Split

__all__ = [
    "NormFactory",
    "Protocol",
    "Curve",
    "ConvergenceVerdict",
    "ClaimResult",
    "GhostNorm",
    "build_mlp",
    "init_weights",
    "train",
    "compare",
    "olympic_mean",
    "run_convergence",
    "reference_curves",
    "cached_curve",
    "clear_cache",
    "torch_threads",
    "call_guard",
    "plot_curves",
    "json_safe",
    "seed_claims",
    "claim_initial_loss",
    "claim_overfit_batch",
    "claim_bn_faster",
    "claim_lr_sweep",
    "claim_init_scales",
    "claim_bn_init_resilience",
    "claim_deep_sigmoid",
    "claim_placement",
    "claim_batch_regularisation",
    "FULL_TIER_EPOCHS",
]

NormFactory = Callable[[int], nn.Module]

#: Epochs of the full tier on the embedded digits: the seed's own horizon ("in fifty
#: epochs"), by which the reference has plateaued (95.1 +/- 0.4 % over 15 seeds) and the
#: plain network has not reached 90 % in any seed.  Measured on the 2-core machine:
#: 3 seeds x (target + reference + no-BN) plus one twin run, 29-34 s (about 0.05-0.07 s
#: an epoch per network), 55-68 s with two threads on a busy machine; a second target
#: reusing the cached reference and no-BN curves, 12-14 s.
FULL_TIER_EPOCHS = 50
#: Epochs on full MNIST (60,000 images, 600 steps an epoch): the reference reaches 98 %
#: in about 10 (seed 002); 20 leave room for a slower target.
FULL_MNIST_EPOCHS = 20

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}
_INITS = ("torch", "normal", "xavier", "lecun", "he")

# Independent random streams derived from one seed.
_STREAM_WEIGHTS, _STREAM_BIASES, _STREAM_DATA, _STREAM_GLOBAL = 0, 1, 2, 3


def _derive_seed(seed: int, stream: int) -> int:
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, stream]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


# ----------------------------------------------------------------------------------------- protocol


@dataclass(frozen=True)
class Protocol:
    """What is trained and how it is judged.

    Training fields (they key the reference cache): ``hidden`` widths,
    ``activation``, norm ``placement`` ("before" or "after" the activation),
    weight ``init`` ("torch": U(+-1/sqrt(fan_in)) as ``nn.Linear``; "normal":
    N(0, init_scale^2); "xavier": Glorot normal, std sqrt(2/(fan_in+fan_out));
    "lecun": std 1/sqrt(fan_in), seed 001's "Xavier" formula; "he": std
    sqrt(2/fan_in)), ``lr``, ``batch_size``, ``momentum`` (0: plain SGD as in
    the seed), ``epochs``, ``eval_batch`` (test-set chunk size in eval mode),
    ``eval_train`` (also evaluate the whole training set each epoch).

    Judging fields: ``seeds``, ``target_accuracy`` (0.90 embedded, 0.98 full
    MNIST), ``confidence`` of the one-sided bounds, ``final_window`` (epochs
    averaged for the final accuracy).
    """

    hidden: tuple[int, ...] = (300, 50)
    lr: float = 0.01
    batch_size: int = 100
    epochs: int = FULL_TIER_EPOCHS
    seeds: tuple[int, ...] = (0, 1, 2)
    target_accuracy: float = 0.90
    optimizer: str = "sgd"
    momentum: float = 0.0
    activation: str = "relu"
    placement: str = "before"
    init: str = "torch"
    init_scale: float | None = None
    confidence: float = 0.99
    final_window: int = 5
    eval_batch: int = 1000
    eval_train: bool = False

    def __post_init__(self) -> None:
        if self.optimizer != "sgd":
            raise ValueError(f"optimizer must be 'sgd' (the seed's protocol), got {self.optimizer!r}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}")
        if self.placement not in ("before", "after"):
            raise ValueError(f"placement must be 'before' or 'after', got {self.placement!r}")
        if self.init not in _INITS:
            raise ValueError(f"init must be one of {_INITS}, got {self.init!r}")
        if self.init == "normal" and self.init_scale is None:
            raise ValueError("init='normal' needs init_scale")
        if self.epochs < 1 or self.batch_size < 2 or not self.seeds:
            raise ValueError("need epochs >= 1, batch_size >= 2 and at least one seed")
        if not 0.5 < self.confidence < 1.0:
            raise ValueError(f"confidence must be in (0.5, 1), got {self.confidence}")
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))

    @classmethod
    def embedded(cls, **overrides: Any) -> Protocol:
        """The full tier on the embedded 5,000 digits: 50 epochs, 3 seeds, target 90 %."""
        return cls(**{"epochs": FULL_TIER_EPOCHS, "target_accuracy": 0.90, **overrides})

    @classmethod
    def full_mnist(cls, **overrides: Any) -> Protocol:
        """The full tier on full MNIST: 20 epochs, 3 seeds, target 98 %."""
        return cls(**{"epochs": FULL_MNIST_EPOCHS, "target_accuracy": 0.98, **overrides})

    @classmethod
    def for_split(cls, split: Split, **overrides: Any) -> Protocol:
        return cls.embedded(**overrides) if split.is_embedded else cls.full_mnist(**overrides)

    @classmethod
    def for_suite(cls, split: Split, epochs: int | None = None, seeds: int | None = None) -> Protocol:
        """The convergence suites' protocol on ``split``; ``epochs``/``seeds`` (seeds 0..n-1) shorten it.

        ``None`` keeps the full tier (:meth:`embedded` or :meth:`full_mnist`); the suites pass
        ``--bn-convergence-epochs``/``--bn-convergence-seeds``, which are for quick experiments.
        """
        overrides: dict[str, Any] = {}
        if epochs is not None:
            overrides["epochs"] = int(epochs)
        if seeds is not None:
            overrides["seeds"] = tuple(range(int(seeds)))
        return cls.for_split(split, **overrides)

    def replace(self, **changes: Any) -> Protocol:
        return dataclasses.replace(self, **changes)

    def training_key(self) -> tuple:
        """The fields that change a training run (the seed aside): the cache key."""
        return (
            self.hidden, self.lr, self.batch_size, self.epochs, self.optimizer, self.momentum,
            self.activation, self.placement, self.init, self.init_scale, self.eval_batch, self.eval_train,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------- network


class GhostNorm(nn.Module):
    """Apply ``norm`` to consecutive chunks of ``ghost_size`` rows in training ("ghost batch norm").

    Used by the seed-claims study to vary the batch that batch norm sees while
    the optimiser's batch stays fixed.  In eval mode the wrapped norm sees the
    whole input.
    """

    def __init__(self, norm: nn.Module, ghost_size: int) -> None:
        super().__init__()
        self.norm = norm
        self.ghost_size = int(ghost_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.shape[0] <= self.ghost_size:
            return self.norm(x)
        return torch.cat([self.norm(c) for c in torch.split(x, self.ghost_size, dim=0)], dim=0)


def _init_std(init: str, fan_in: int, fan_out: int, scale: float | None) -> float | None:
    if init == "normal":
        return float(scale)  # type: ignore[arg-type]
    if init == "xavier":
        return math.sqrt(2.0 / (fan_in + fan_out))
    if init == "lecun":
        return 1.0 / math.sqrt(fan_in)
    if init == "he":
        return math.sqrt(2.0 / fan_in)
    return None  # "torch": uniform


def init_weights(model: nn.Module, seed: int, init: str = "torch", init_scale: float | None = None) -> None:
    """Fill every ``nn.Linear`` of ``model`` from generators seeded by ``seed`` alone.

    Weights come from one stream and biases from another, in layer order, so
    the networks with and without batch norm (which differ in biases) and
    with any norm layer (whatever RNG its constructor consumed) start from
    identical weights.  "torch" draws U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for
    weights and biases, as ``nn.Linear`` does; the Gaussian inits draw
    N(0, std^2) weights and zero biases.
    """
    gw = torch.Generator().manual_seed(_derive_seed(seed, _STREAM_WEIGHTS))
    gb = torch.Generator().manual_seed(_derive_seed(seed, _STREAM_BIASES))
    with torch.no_grad():
        for m in model.modules():
            if not isinstance(m, nn.Linear):
                continue
            fan_out, fan_in = m.weight.shape
            std = _init_std(init, fan_in, fan_out, init_scale)
            if std is None:
                bound = 1.0 / math.sqrt(fan_in)
                w = (torch.rand(m.weight.shape, generator=gw, dtype=torch.float64) * 2 - 1) * bound
                b = (torch.rand(fan_out, generator=gb, dtype=torch.float64) * 2 - 1) * bound
            else:
                w = torch.randn(m.weight.shape, generator=gw, dtype=torch.float64) * std
                b = torch.zeros(fan_out, dtype=torch.float64)
            m.weight.copy_(w.to(m.weight.dtype))
            if m.bias is not None:
                m.bias.copy_(b.to(m.bias.dtype))


def build_mlp(
    norm_factory: NormFactory | None,
    *,
    in_features: int = 784,
    num_classes: int = 10,
    hidden: Sequence[int] = (300, 50),
    activation: str = "relu",
    placement: str = "before",
    init: str = "torch",
    init_scale: float | None = None,
    bias: bool | None = None,
    output_bias: bool | None = None,
    seed: int = 0,
) -> nn.Sequential:
    """Seed 002's MLP: ``Linear -> [norm] -> act`` per hidden width, then ``Linear`` to the classes.

    ``norm_factory(width)`` builds one norm layer (``None``: no batch norm).
    ``placement="after"`` puts it after the activation instead.  ``bias=None``
    (default) gives a hidden linear layer a bias only when a norm does not
    follow it directly (a bias before batch norm is cancelled by the mean
    subtraction); ``output_bias=None`` follows the seed, whose batch-norm
    network has a bias-free output layer (``Linear' w3``) and whose plain
    network has biases everywhere.  Weights are set by :func:`init_weights`
    from ``seed``, independent of whatever the norm layers' constructors do.
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
    if placement not in ("before", "after"):
        raise ValueError(f"placement must be 'before' or 'after', got {placement!r}")
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        norm_next = norm_factory is not None and placement == "before"
        layers.append(nn.Linear(width, h, bias=(not norm_next) if bias is None else bias))
        if norm_factory is not None and placement == "before":
            layers.append(_as_module(norm_factory(h), h))
        layers.append(_ACTIVATIONS[activation]())
        if norm_factory is not None and placement == "after":
            layers.append(_as_module(norm_factory(h), h))
        width = h
    out_b = (norm_factory is None) if output_bias is None else output_bias
    layers.append(nn.Linear(width, num_classes, bias=out_b))
    model = nn.Sequential(*layers)
    init_weights(model, seed, init, init_scale)
    return model


def _as_module(obj: Any, width: int) -> nn.Module:
    if not isinstance(obj, nn.Module):
        raise TypeError(f"norm factory returned {type(obj).__name__} for width {width}, expected a torch.nn.Module")
    return obj


# ----------------------------------------------------------------------------------------- curves


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

    def epochs_to(self, target: float, interpolate: bool = True) -> float | None:
        """Epochs until the test accuracy first reaches ``target`` (``None``: never).

        With ``interpolate``, linearly between the two evaluations that bracket
        the crossing (epoch 0 is the untrained network), which resolves finer
        than the one-epoch evaluation interval.
        """
        return _epochs_to([self.initial_test_acc, *self.test_acc], target, interpolate)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _epochs_to(accs: Sequence[float], target: float, interpolate: bool = True) -> float | None:
    for e in range(1, len(accs)):
        if accs[e] >= target:
            if not interpolate:
                return float(e)
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
) -> Curve:
    """Train the seed's network with ``norm_factory`` for ``protocol.epochs``; never raises.

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
    a run of a norm layer that is not built in executes each piece of work
    through the guard (a timeout it raises stops the run as "crashed").
    """
    dev = torch.device(device)
    curve = Curve(label=label, seed=int(seed), device=str(dev), n_test=split.n_test, num_classes=split.num_classes)
    builtin = norm_factory is None or any(norm_factory is f for f in BUILTIN_FACTORIES.values())
    guard = _GUARDS[-1] if _GUARDS and not builtin else _unguarded
    stage = "building the network"
    try:
        data = split.tensors(dev)
    except Exception as exc:  # the device itself is unusable: not the target's fault, but never raise
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
            opt = torch.optim.SGD(model.parameters(), lr=protocol.lr, momentum=protocol.momentum)
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
                    step = int(bad.nonzero()[0, 0]) + 1
                    curve.status = "diverged"
                    curve.message = (
                        f"training loss became {float(loss_t[step - 1])} at epoch {epoch}, "
                        f"step {step} of {steps} (lr {protocol.lr})"
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
        except Exception as exc:
            curve.status = "crashed"
            curve.message = f"{stage}: {_describe_exc(exc)}"
    return curve


# ----------------------------------------------------------------------------------------- cache


def _reference_factory(n: int) -> nn.Module:
    from bnverify.reference.batchnorm_torch import BatchNorm

    return BatchNorm(n)


def _torch_factory(n: int) -> nn.Module:
    return nn.BatchNorm1d(n)


#: The built-in networks whose curves do not depend on the target and are cached.
BUILTIN_FACTORIES: dict[str, NormFactory | None] = {
    "reference": _reference_factory,
    "torch": _torch_factory,
    "no-bn": None,
}

_CURVE_CACHE: dict[tuple, Curve] = {}


def clear_cache() -> None:
    """Forget every cached reference, twin and no-batch-norm curve."""
    _CURVE_CACHE.clear()


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


# ----------------------------------------------------------------------------------------- verdict


def olympic_mean(values: Iterable[float | None]) -> float | None:
    """MLPerf's score: drop the fastest and the slowest run (with 3 or more), average the rest.

    ``None`` (a run that never converged) counts as infinitely slow; the
    result is ``None`` when a non-converged run survives the trimming.
    """
    v = sorted(math.inf if x is None else float(x) for x in values)
    if not v:
        return None
    if len(v) >= 3:
        v = v[1:-1]
    m = float(np.mean(v))
    return m if math.isfinite(m) else None


def _sd(values: Sequence[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) >= 2 else 0.0


def _pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.{digits}f}%"


def _ep(x: float | None) -> str:
    return "never" if x is None else f"{x:.1f}"


@dataclass
class ConvergenceVerdict:
    """The outcome of :func:`compare`: numbers, per-epoch series and a one-paragraph explanation.

    ``outcome`` is "pass", "fail" or "error" (the reference itself did not
    train, so nothing can be judged); ``passed`` is ``True``/``False``/``None``
    accordingly.  Accuracies are fractions; ``*_points`` are percentage points.
    """

    outcome: str
    explanation: str
    reasons: list[str]
    protocol: Protocol
    n_test: int
    target: list[Curve]
    reference: list[Curve]
    nobn: list[Curve]
    twin: list[Curve] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)
    reference_mean: list[float] = field(default_factory=list)
    reference_sd: list[float] = field(default_factory=list)
    band_low: list[float] = field(default_factory=list)
    band_high: list[float] = field(default_factory=list)
    target_mean: list[float] = field(default_factory=list)
    nobn_mean: list[float] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)
    epochs_to_target: dict[str, Any] = field(default_factory=dict)
    speedup: float | None = None
    speedup_is_lower_bound: bool = False
    target_speedup: float | None = None
    bug_impact_points: float | None = None
    bug_impact_at: str = ""
    epochs_below_band: int = 0
    notes: list[str] = field(default_factory=list)
    seconds_per_epoch: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool | None:
        return {"pass": True, "fail": False}.get(self.outcome)

    def metrics(self) -> dict[str, float]:
        """Flat scalar metrics (for MLflow): finite floats only."""
        out: dict[str, float] = {}
        for k, v in self.final.items():
            out[f"final_{k}"] = v
        for who in ("target", "reference", "nobn"):
            v = self.epochs_to_target.get(who)
            if v is not None:
                out[f"epochs_to_target_{who}"] = v
            out[f"nonconverged_{who}"] = float(self.epochs_to_target.get(f"{who}_nonconverged", 0))
        if self.speedup is not None:
            out["bn_speedup"] = self.speedup
            out["bn_speedup_is_lower_bound"] = float(self.speedup_is_lower_bound)
        if self.target_speedup is not None:
            out["target_speedup"] = self.target_speedup
        if self.bug_impact_points is not None:
            out["bug_impact_points"] = self.bug_impact_points
        out["epochs_below_band"] = float(self.epochs_below_band)
        out["passed"] = float(self.outcome == "pass")
        for k, v in self.seconds_per_epoch.items():
            out[f"seconds_per_epoch_{k}"] = v
        return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(float(v))}

    def series(self) -> dict[str, list[float]]:
        """Per-epoch series (step = epoch, starting at 1) for MLflow."""
        out = {
            "target_test_acc": self.target_mean,
            "reference_test_acc": self.reference_mean,
            "reference_band_low": self.band_low,
            "reference_band_high": self.band_high,
            "nobn_test_acc": self.nobn_mean,
        }
        for who, curves in (("target", self.target), ("reference", self.reference), ("nobn", self.nobn)):
            loss = _mean_series([c.train_loss for c in curves if c.ok], len(self.epochs))
            if loss:
                out[f"{who}_train_loss"] = loss
        return {k: list(map(float, v)) for k, v in out.items() if v}

    def table(self) -> str:
        """A console table: accuracy per epoch (every epoch up to 10, then every 5th and the last)."""
        e = self.epochs
        shown = [i for i in e if i <= 10 or i % 5 == 0 or i == e[-1]] if e else []
        head = f"{'epoch':>5}  {'target':>7}  {'reference (band)':>24}  {'no-BN':>7}"
        lines = [head, "-" * len(head)]
        for i in shown:
            k = i - 1
            t = self.target_mean[k] if k < len(self.target_mean) else float("nan")
            r = self.reference_mean[k] if k < len(self.reference_mean) else float("nan")
            band = (
                f"[{100 * self.band_low[k]:.1f}, {100 * self.band_high[k]:.1f}]" if k < len(self.band_low) else ""
            )
            nb = self.nobn_mean[k] if k < len(self.nobn_mean) else float("nan")
            flag = " <" if k < len(self.band_low) and t < self.band_low[k] else ""
            lines.append(f"{i:>5}  {_pct(t):>7}  {_pct(r):>7} {band:>16}  {_pct(nb):>7}{flag}")
        ett = self.epochs_to_target
        tgt = _pct(self.protocol.target_accuracy, 0)
        lines.append(
            f"epochs to {tgt}: target {_ep(ett.get('target'))}, reference {_ep(ett.get('reference'))}"
            f" (allowed <= {_ep(ett.get('allowed'))}), no-BN {_ep(ett.get('nobn'))}"
        )
        if self.speedup is not None:
            bound = ">= " if self.speedup_is_lower_bound else ""
            lines.append(f"batch-norm speed-up over no-BN: {bound}{self.speedup:.2f}x")
        lines.append(f"verdict: {self.outcome.upper()}: {self.explanation}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["passed"] = self.passed
        return d


def _mean_series(rows: Sequence[Sequence[float]], length: int) -> list[float]:
    rows = [r for r in rows if len(r) >= length]
    if not rows or length == 0:
        return []
    return [float(x) for x in np.mean(np.asarray([r[:length] for r in rows], dtype=np.float64), axis=0)]


def _acc_matrix(curves: Sequence[Curve], epochs: int) -> np.ndarray:
    """Accuracy per (run, epoch); epochs after a crash or divergence score chance."""
    m = np.empty((len(curves), epochs), dtype=np.float64)
    for i, c in enumerate(curves):
        row = list(c.test_acc[:epochs])  # a stopped run holds the epochs it completed
        row += [c.chance] * (epochs - len(row))
        m[i] = row[:epochs]
    return m


def _binomial_floor(p: np.ndarray | float, n: int, z: float) -> np.ndarray:
    """z times the binomial standard error of an accuracy ``p`` measured on ``n`` examples."""
    lo = 0.5 / max(n, 1)
    pp = np.clip(np.asarray(p, dtype=np.float64), lo, 1 - lo)
    return z * np.sqrt(pp * (1 - pp) / max(n, 1))


def compare(
    target_curves: Sequence[Curve],
    reference_curves: Sequence[Curve],
    nobn_curves: Sequence[Curve] = (),
    protocol: Protocol | None = None,
    *,
    twin_curves: Sequence[Curve] = (),
    target_name: str = "target",
) -> ConvergenceVerdict:
    """Judge the target's curves against the reference's (see the module docstring).

    ``twin_curves`` are runs of a second correct batch norm with seeds that
    the reference also ran; their difference from the reference measures
    run-to-run variation.  The bounds are one-sided at ``protocol.confidence``
    with ``t`` quantiles on ``n_reference - 1`` degrees of freedom (``z`` for
    the binomial floor).
    """
    from scipy import stats

    protocol = protocol or Protocol()
    target_curves, reference_curves = list(target_curves), list(reference_curves)
    nobn_curves, twin_curves = list(nobn_curves), list(twin_curves)
    if not target_curves or not reference_curves:
        raise ValueError("compare needs at least one target and one reference curve")
    E = protocol.epochs
    n_test = reference_curves[0].n_test
    goal = protocol.target_accuracy
    w = max(1, min(protocol.final_window, E))
    conf = protocol.confidence
    v = ConvergenceVerdict(
        outcome="error", explanation="", reasons=[], protocol=protocol, n_test=n_test,
        target=target_curves, reference=reference_curves, nobn=nobn_curves, twin=twin_curves,
        epochs=list(range(1, E + 1)),
    )
    for who, curves in (("target", target_curves), ("reference", reference_curves), ("nobn", nobn_curves)):
        times = [t for c in curves for t in c.epoch_time_s]
        if times:
            v.seconds_per_epoch[who] = float(np.mean(times))

    bad_ref = [c for c in reference_curves if not c.ok or len(c.test_acc) < E]
    if bad_ref:
        c = bad_ref[0]
        v.explanation = (
            f"the reference batch norm itself did not complete {E} epochs (seed {c.seed}: "
            f"{c.status}, {c.message or 'too few epochs'}); nothing can be judged against it"
        )
        v.reasons = ["reference failed"]
        return v

    n_r, n_t = len(reference_curves), len(target_curves)
    R = _acc_matrix(reference_curves, E)
    T = _acc_matrix(target_curves, E)
    df = n_r - 1
    tq = float(stats.t.ppf(conf, df)) if df >= 1 else 0.0
    zq = float(stats.norm.ppf(conf))
    se_factor = math.sqrt(1.0 / n_r + 1.0 / n_t)
    if df < 1:
        v.notes.append("one reference seed: the band is the test-set floor (plus run-to-run variation) only")

    # run-to-run variation from twin runs (same seed, a second correct batch norm)
    ref_by_seed = {c.seed: i for i, c in enumerate(reference_curves)}
    pairs = [(c, ref_by_seed[c.seed]) for c in twin_curves if c.ok and c.seed in ref_by_seed and len(c.test_acc) >= E]
    if pairs:
        D = np.asarray([np.asarray(c.test_acc[:E]) - R[i] for c, i in pairs])
        s_run = np.sqrt(np.mean(D**2, axis=0) / 2.0)
        d_final = np.asarray([c.final_accuracy(w) - reference_curves[i].final_accuracy(w) for c, i in pairs])
        s_run_final = float(np.sqrt(np.mean(d_final**2) / 2.0))
    else:
        s_run = np.zeros(E)
        s_run_final = 0.0

    mu = R.mean(axis=0)
    s_seed = R.std(axis=0, ddof=1) if n_r >= 2 else np.zeros(E)
    sigma = np.sqrt(s_seed**2 + s_run**2)
    half = np.maximum(tq * sigma * se_factor, _binomial_floor(mu, n_test, zq))
    v.reference_mean, v.reference_sd = mu.tolist(), sigma.tolist()
    v.band_low, v.band_high = np.clip(mu - half, 0, 1).tolist(), np.clip(mu + half, 0, 1).tolist()
    tmean = T.mean(axis=0)
    v.target_mean = tmean.tolist()
    if nobn_curves:
        v.nobn_mean = _acc_matrix(nobn_curves, E).mean(axis=0).tolist()
    v.epochs_below_band = int(np.sum(tmean < mu - half))

    # final accuracy
    rf = np.asarray([c.final_accuracy(w) for c in reference_curves])
    tf = np.asarray([c.final_accuracy(w) for c in target_curves])
    mu_f, s_seed_f = float(rf.mean()), _sd(rf.tolist())
    sigma_f = math.sqrt(s_seed_f**2 + s_run_final**2)
    floor_f = float(_binomial_floor(mu_f, n_test, zq))
    half_f = max(tq * sigma_f * se_factor, floor_f)
    t_f = float(tf.mean())
    v.final = {
        "target": t_f,
        "reference": mu_f,
        "reference_sd_seed": s_seed_f,
        "reference_sd_run": s_run_final,
        "band_low": mu_f - half_f,
        "band_high": mu_f + half_f,
        "band_half_width": half_f,
        "binomial_floor": floor_f,
        "t_quantile": tq,
        "z_quantile": zq,
        "window": float(w),
    }
    if nobn_curves:
        v.final["nobn"] = float(np.mean([c.final_accuracy(w) for c in nobn_curves]))
    # diagnostic only: target minus reference on the same seed (same start, same data order)
    ref_final_by_seed = {c.seed: c.final_accuracy(w) for c in reference_curves}
    paired = [c.final_accuracy(w) - ref_final_by_seed[c.seed] for c in target_curves if c.seed in ref_final_by_seed]
    if paired:
        v.final["paired_difference"] = float(np.mean(paired))
        v.final["paired_max_abs_difference"] = float(np.max(np.abs(paired)))

    # epochs to the target accuracy
    def ett(curves: Sequence[Curve]) -> list[float | None]:
        return [c.epochs_to(goal) if c.ok or c.test_acc else None for c in curves]

    r_e, t_e = ett(reference_curves), ett(target_curves)
    r_ol, t_ol = olympic_mean(r_e), olympic_mean(t_e)
    r_nc, t_nc = sum(x is None for x in r_e), sum(x is None for x in t_e)
    info: dict[str, Any] = {
        "target": t_ol, "reference": r_ol, "target_per_seed": t_e, "reference_per_seed": r_e,
        "target_nonconverged": t_nc, "reference_nonconverged": r_nc, "allowed": None,
    }
    reasons: list[str] = []
    speed_fail = False
    ref_converges = r_nc <= 1 and r_ol is not None
    if ref_converges:
        r_fin = [x for x in r_e if x is not None]
        s_e = _sd(r_fin)
        delta = float(_binomial_floor(goal, n_test, zq))
        mean_curve = [float(np.mean([c.initial_test_acc for c in reference_curves])), *mu.tolist()]
        e_lo = _epochs_to(mean_curve, goal - delta)
        e_hi = _epochs_to(mean_curve, goal + delta)
        e_hi = float(E) if e_hi is None else e_hi
        floor_e = max(1.0, (e_hi - (e_lo if e_lo is not None else 0.0)) / 2.0)
        allowed = r_ol + max(tq * s_e * se_factor, floor_e)
        info.update({"reference_sd": s_e, "allowed": allowed, "floor_epochs": floor_e})
        if t_nc > 1:
            speed_fail = True
            reasons.append(f"{t_nc} of {n_t} runs never reached {_pct(goal, 0)} in {E} epochs")
        elif t_ol is None or t_ol > allowed:
            speed_fail = True
            reasons.append(f"slower to {_pct(goal, 0)}: {_ep(t_ol)} epochs against at most {allowed:.1f}")
    else:
        v.notes.append(
            f"the reference reached {_pct(goal, 0)} in only {n_r - r_nc} of {n_r} seeds within {E} epochs, "
            "so epochs-to-target is not judged"
        )
    v.epochs_to_target = info

    # no batch norm and the speed-up
    if nobn_curves:
        n_e = ett(nobn_curves)
        n_ol = olympic_mean(n_e)
        info["nobn"], info["nobn_per_seed"] = n_ol, n_e
        info["nobn_nonconverged"] = sum(x is None for x in n_e)
        if r_ol:
            if n_ol is not None:
                v.speedup = n_ol / r_ol
            else:
                v.speedup, v.speedup_is_lower_bound = E / r_ol, True
        if t_ol:
            v.target_speedup = (n_ol if n_ol is not None else float(E)) / t_ol

    # failures
    broken = [c for c in target_curves if not c.ok]
    if broken:
        c = broken[0]
        reasons.insert(0, f"{c.status} in {len(broken)} of {n_t} runs (seed {c.seed}: {c.message})")
    final_fail = t_f < mu_f - half_f
    if final_fail:
        reasons.append(
            f"final accuracy {_pct(t_f)} below the band [{100 * (mu_f - half_f):.1f}, {100 * (mu_f + half_f):.1f}]"
        )
    if t_f > mu_f + half_f:
        v.notes.append(
            f"final accuracy {_pct(t_f)} is above the reference band: better than the reference, which is "
            "unusual for a batch norm (check that nothing leaks test data into training)"
        )

    band_txt = f"[{100 * (mu_f - half_f):.1f}, {100 * (mu_f + half_f):.1f}]"
    sd_e = info.get("reference_sd")
    ref_e_txt = f"{_ep(r_ol)}" + (f" +/- {sd_e:.1f}" if sd_e else "")
    n_word = f"olympic mean of {n_t} seed{'s' if n_t != 1 else ''}"
    reach = (
        f"reached {_pct(goal, 0)} in {_ep(t_ol)} epochs ({n_word}); reference {ref_e_txt}"
        if t_ol is not None
        else f"did not reach {_pct(goal, 0)} in {E} epochs ({t_nc} of {n_t} runs never did); reference took {ref_e_txt}"
    )
    if broken or final_fail or speed_fail:
        v.outcome = "fail"
        deficit_final = 100 * (mu_f - t_f)
        impact, where = deficit_final, f"final accuracy (mean of the last {w} epochs)"
        deficit_early = None
        if speed_fail and r_ol is not None:
            k = min(E, max(1, math.ceil(r_ol))) - 1
            deficit_early = (k + 1, 100 * float(mu[k] - tmean[k]))
            if not (broken or final_fail):  # slower only: the cost is the accuracy missing on the way
                impact, where = deficit_early[1], f"epoch {k + 1}, when the reference reaches {_pct(goal, 0)}"
        v.bug_impact_points, v.bug_impact_at = impact, where
        lead = f"{target_name} {reach}"
        if broken:
            c = broken[0]
            lead = f"{target_name} {c.status} in {len(broken)} of {n_t} runs (seed {c.seed}: {c.message}); it {reach}"
        chance = _pct(1.0 / max(1, target_curves[0].num_classes), 0)
        chance_txt = f", a stopped run scoring chance ({chance})" if broken else ""
        v.explanation = (
            f"{lead}; its final accuracy {_pct(t_f)}{chance_txt} is {deficit_final:.1f} points "
            f"{'below' if deficit_final >= 0 else 'above'} the reference's {_pct(mu_f)} (band {band_txt})"
            + (
                f"; at epoch {deficit_early[0]}, when the reference reaches {_pct(goal, 0)}, it trails by "
                f"{deficit_early[1]:.1f} points"
                if deficit_early is not None
                else ""
            )
            + "."
        )
    else:
        v.outcome = "pass"
        v.explanation = (
            f"{target_name} trains like the reference: it {reach}; its final accuracy {_pct(t_f)} "
            f"lies {'inside' if t_f <= mu_f + half_f else 'above'} the reference band {band_txt} "
            f"(reference {_pct(mu_f)})."
        )
    if v.speedup is not None:
        sp = f"{'at least ' if v.speedup_is_lower_bound else ''}{v.speedup:.1f}x"
        tail = f" (no-BN never reached {_pct(goal, 0)} in {E} epochs)" if v.speedup_is_lower_bound else ""
        v.explanation += f" Batch norm trains {sp} faster than no batch norm{tail}."
    v.reasons = reasons
    return v


def run_convergence(
    target_factory: NormFactory,
    split: Split,
    protocol: Protocol | None = None,
    device: str | torch.device = "cpu",
    *,
    reference: str = "reference",
    twin: str | None = "torch",
    target_name: str = "target",
    progress: Callable[[str], None] | None = None,
    threads: int | None = 1,
) -> ConvergenceVerdict:
    """Train the target, the (cached) reference, twin and no-batch-norm networks and compare.

    ``reference`` and ``twin`` name built-in batch norms (``"reference"``,
    ``"torch"``); the twin runs the first seed only, to measure run-to-run
    variation (``twin=None`` skips it).  ``progress`` receives a line per run.
    ``threads`` sets torch's intra-op CPU threads for the duration and
    restores them after (``None`` leaves them alone).  The default, one, is
    what these small matrices run best with on a shared 2-core machine: the
    full tier took 34 s with one thread and 55-68 s with two while other jobs
    ran (see :func:`torch_threads`).
    """
    protocol = protocol or Protocol.for_split(split)
    with torch_threads(threads):
        return _run_convergence(target_factory, split, protocol, device, reference, twin, target_name, progress)


def _run_convergence(
    target_factory: NormFactory,
    split: Split,
    protocol: Protocol,
    device: str | torch.device,
    reference: str,
    twin: str | None,
    target_name: str,
    progress: Callable[[str], None] | None,
) -> ConvergenceVerdict:

    def say(msg: str) -> None:
        if progress is not None:
            progress(msg)

    ref, nobn, twins, tgt = [], [], [], []
    for s in protocol.seeds:
        ref.append(cached_curve(reference, split, protocol, s, device))
        say(f"reference seed {s}: {_pct(ref[-1].final_accuracy(protocol.final_window))}")
        nobn.append(cached_curve("no-bn", split, protocol, s, device))
        say(f"no-BN seed {s}: {_pct(nobn[-1].final_accuracy(protocol.final_window))}")
    if twin is not None:
        twins.append(cached_curve(twin, split, protocol, protocol.seeds[0], device))
    for s in protocol.seeds:
        tgt.append(train(target_factory, split, protocol, s, device, label="target"))
        c = tgt[-1]
        say(f"target seed {s}: {c.status} {_pct(c.final_accuracy(protocol.final_window))} {c.message}".rstrip())
    return compare(tgt, ref, nobn, protocol, twin_curves=twins, target_name=target_name)


def json_safe(value: Any) -> Any:
    """``value`` with tuples as lists and non-finite floats as ``None``: strict JSON, and portable
    through pytest-xdist's channel (used for verdicts, claim numbers and protocol details)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ----------------------------------------------------------------------------------------- plot

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

    verdict = data if isinstance(data, ConvergenceVerdict) else None
    if verdict is not None:
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


# ----------------------------------------------------------------------------------------- seed claims


@dataclass
class ClaimResult:
    """One claim of the seeds, tested: ``reproduced`` with the ``numbers`` behind it."""

    claim: str
    source: str
    reproduced: bool
    numbers: dict[str, Any]
    explanation: str
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _claim(
    claim: str, source: str, reproduced: bool, numbers: dict[str, Any], explanation: str, t0: float
) -> ClaimResult:
    return ClaimResult(claim, source, bool(reproduced), numbers, explanation, time.perf_counter() - t0)


def _final(curves: Sequence[Curve], window: int = 1) -> float:
    return float(np.mean([c.final_accuracy(window) for c in curves]))


def _trains(c: Curve) -> str:
    return f"{_pct(c.final_accuracy(1))}" if c.ok else c.status


def claim_initial_loss(
    split: Split, norm_factory: NormFactory, device: Any = "cpu", seeds: Sequence[int] = (0, 1, 2)
) -> ClaimResult:
    """Sanity check: the loss of the untrained network is near ln(10) (uniform predictions).

    Measures the cross-entropy of the first mini-batch before any update, for
    the seed's network with and without batch norm (torch's default init).
    Reproduced when every run is within 10 % of ln(num_classes): the
    cross-entropy of near-zero logits, which a 10 % margin allows to have a
    standard deviation up to about 0.7.
    """
    t0 = time.perf_counter()
    p = Protocol(epochs=1, seeds=tuple(seeds))
    expected = math.log(split.num_classes)
    bn = [train(norm_factory, split, p, s, device, label="bn") for s in seeds]
    plain = [train(None, split, p, s, device, label="no-bn") for s in seeds]
    losses = {"bn": [c.initial_loss for c in bn], "no_bn": [c.initial_loss for c in plain]}
    ok = all(c.ok for c in bn + plain) and all(
        math.isfinite(x) and abs(x - expected) <= 0.1 * expected for v in losses.values() for x in v
    )
    return _claim(
        "initial loss is near ln(10)", "sanity check (cs231n; seed 001's training notes)", ok,
        {"ln_classes": expected, **losses},
        f"first-batch loss with batch norm {np.mean(losses['bn']):.3f}, without {np.mean(losses['no_bn']):.3f}; "
        f"ln {split.num_classes} = {expected:.3f} (within 10 % required)",
        t0,
    )


def claim_overfit_batch(
    split: Split, norm_factory: NormFactory, device: Any = "cpu", seed: int = 0, steps: int = 300, lr: float = 0.1
) -> ClaimResult:
    """Sanity check: the network with batch norm can overfit a single mini-batch of 100 examples.

    Repeats SGD (lr 0.1: the single-batch test asks for memorisation, not the
    protocol's pace) on one fixed batch for ``steps`` steps and measures the
    loss and the train-mode accuracy on it.  Reproduced when the accuracy is
    100 % and the loss has fallen below 1 % of its starting value.
    """
    t0 = time.perf_counter()
    dev = torch.device(device)
    data = split.tensors(dev)
    g = torch.Generator().manual_seed(_derive_seed(seed, _STREAM_DATA))
    idx = torch.randperm(split.n_train, generator=g)[:100].to(dev)
    xb, yb = data.x_train[idx], data.y_train[idx]
    first = last = float("nan")
    acc = 0.0
    status = "ok"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_derive_seed(seed, _STREAM_GLOBAL))
        try:
            model = build_mlp(
                norm_factory, in_features=split.in_features, num_classes=split.num_classes, seed=seed
            ).to(dev)
            opt = torch.optim.SGD(model.parameters(), lr=lr)
            model.train()
            for i in range(steps):
                out = model(xb)
                loss = F.cross_entropy(out, yb)
                if i == 0:
                    first = float(loss.detach())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            with torch.no_grad():
                out = model(xb)
                last = float(F.cross_entropy(out, yb))
                acc = float((out.argmax(1) == yb).float().mean())
        except Exception as exc:
            status = f"crashed: {_describe_exc(exc)}"
    ok = status == "ok" and acc == 1.0 and math.isfinite(last) and last < 0.01 * first
    return _claim(
        "a single mini-batch can be overfit", "sanity check (cs231n)", ok,
        {"steps": steps, "lr": lr, "loss_first": first, "loss_last": last, "accuracy": acc, "status": status},
        f"after {steps} steps on one batch of 100: loss {first:.3f} -> {last:.4f}, accuracy {_pct(acc)}"
        + ("" if status == "ok" else f" ({status})"),
        t0,
    )


def claim_bn_faster(
    split: Split, norm_factory: NormFactory | None, device: Any = "cpu", protocol: Protocol | None = None
) -> ClaimResult:
    """Seed 002's headline: with batch norm the network reaches the target accuracy several times sooner.

    Runs the full protocol (cached curves when ``norm_factory`` is ``None``,
    i.e. the reference) with and without batch norm.  The seed reports about
    10 epochs to 98 % against "struggling" after 50, so: reproduced when the
    speed-up (olympic means of epochs to the target) is at least 5x, or the
    plain network never reaches the target while batch norm does within a
    fifth of the epochs.
    """
    t0 = time.perf_counter()
    p = protocol or Protocol.for_split(split)
    if norm_factory is None:
        bn = reference_curves(split, p, device)
    else:
        bn = [train(norm_factory, split, p, s, device, label="bn") for s in p.seeds]
    plain = reference_curves(split, p, device, kind="no-bn")
    goal = p.target_accuracy
    e_bn = olympic_mean(c.epochs_to(goal) if c.ok else None for c in bn)
    e_plain = olympic_mean(c.epochs_to(goal) if c.ok else None for c in plain)
    if e_bn is None:
        ok, speed, txt = False, None, f"batch norm itself did not reach {_pct(goal, 0)} in {p.epochs} epochs"
    elif e_plain is None:
        speed = p.epochs / e_bn
        ok = speed >= 5
        txt = f"no batch norm never reached {_pct(goal, 0)} in {p.epochs} epochs: speed-up at least {speed:.1f}x"
    else:
        speed = e_plain / e_bn
        ok = speed >= 5
        txt = f"speed-up {speed:.1f}x"
    return _claim(
        f"batch norm reaches {_pct(goal, 0)} several times sooner", "seed 002 (MNIST, 784-300-50-10)", ok,
        {
            "epochs_to_target_bn": e_bn, "epochs_to_target_no_bn": e_plain, "speedup": speed,
            "final_bn": _final(bn, p.final_window), "final_no_bn": _final(plain, p.final_window),
            "epochs": p.epochs, "target": goal,
        },
        f"epochs to {_pct(goal, 0)} with batch norm {_ep(e_bn)}, without {_ep(e_plain)}; {txt}; accuracy after "
        f"{p.epochs} epochs {_pct(_final(bn, p.final_window))} vs {_pct(_final(plain, p.final_window))}",
        t0,
    )


def claim_lr_sweep(
    split: Split, norm_factory: NormFactory, device: Any = "cpu", seed: int = 0,
    lrs: Sequence[float] = (0.01, 0.1, 0.5, 1.0, 2.0, 5.0), epochs: int = 3, base_lr: float = 0.01,
) -> ClaimResult:
    """Seed 002 / Santurkar et al.: batch norm trains at learning rates where the plain network fails.

    Trains both networks for ``epochs`` at each rate.  A run "trains" when it
    completes without a non-finite loss and ends at least half-way from
    chance to 100 % test accuracy; it "fails" when it diverges (non-finite
    loss) or collapses to within 10 points of chance.  Only rates above the
    protocol's ``base_lr`` count (the claim is about *higher* rates; at the
    base rate the plain network is merely slow).  Reproduced when at some
    such rate batch norm trains and the plain network fails.
    """
    t0 = time.perf_counter()
    chance = 1.0 / split.num_classes
    rows = []
    hit = []
    for lr in lrs:
        p = Protocol(epochs=epochs, lr=lr, seeds=(seed,))
        bn = train(norm_factory, split, p, seed, device, label="bn")
        plain = train(None, split, p, seed, device, label="no-bn")
        bn_trains = bn.ok and bn.final_accuracy(1) >= (1 + chance) / 2
        plain_fails = (not plain.ok) or plain.final_accuracy(1) <= chance + 0.10
        rows.append({"lr": lr, "bn": _trains(bn), "no_bn": _trains(plain),
                     "bn_acc": bn.final_accuracy(1), "no_bn_acc": plain.final_accuracy(1),
                     "bn_status": bn.status, "no_bn_status": plain.status})
        if lr > base_lr and bn_trains and plain_fails:
            hit.append(lr)
    table = ", ".join(f"lr {r['lr']:g}: BN {r['bn']} / plain {r['no_bn']}" for r in rows)
    return _claim(
        "batch norm trains at learning rates where the plain network diverges",
        "seed 002 ('allows higher learning rates'); Santurkar et al. 2018", bool(hit),
        {"epochs": epochs, "rates": rows, "rates_only_bn_trains": hit},
        f"test accuracy after {epochs} epochs: {table}"
        + (
            f"; at lr {', '.join(f'{x:g}' for x in hit)} only batch norm trains (the plain network diverges "
            "or collapses to chance)"
            if hit
            else "; no rate above the protocol's separates them"
        ),
        t0,
    )


_INITS_STUDIED = {"0.01": ("normal", 0.01), "1.0": ("normal", 1.0), "xavier": ("xavier", None), "he": ("he", None)}


def _init_study(
    split: Split, norm_factory: NormFactory, device: Any, seed: int, epochs: int
) -> dict[str, dict[str, Curve]]:
    out: dict[str, dict[str, Curve]] = {"bn": {}, "no_bn": {}}
    for name, (init, scale) in _INITS_STUDIED.items():
        p = Protocol(epochs=epochs, init=init, init_scale=scale, seeds=(seed,))
        out["bn"][name] = train(norm_factory, split, p, seed, device, label=f"bn-{name}")
        out["no_bn"][name] = train(None, split, p, seed, device, label=f"no-bn-{name}")
    return out


def claim_init_scales(
    split: Split, norm_factory: NormFactory, device: Any = "cpu", seed: int = 0, epochs: int = 5,
    study: dict[str, dict[str, Curve]] | None = None,
) -> ClaimResult:
    """Seed 001: weights of scale 0.01 are too small and of scale 1.0 too large; Xavier and He are right.

    Trains the plain network (no batch norm) for ``epochs`` from N(0, 0.01^2),
    N(0, 1), Xavier (Glorot normal) and He weights.  Reproduced when both bad
    scales end below both good inits by more than the test set resolves (the
    binomial floor at 99 %).  The batch-norm runs of the same study are in
    the numbers too (see :func:`claim_bn_init_resilience`).
    """
    t0 = time.perf_counter()
    study = study or _init_study(split, norm_factory, device, seed, epochs)
    acc = {who: {k: c.final_accuracy(1) for k, c in runs.items()} for who, runs in study.items()}
    plain = acc["no_bn"]
    floor = float(_binomial_floor(max(plain.values()), split.n_test, 2.326))
    good = min(plain["xavier"], plain["he"])
    bad = max(plain["0.01"], plain["1.0"])
    ok = bad < good - floor
    fmt = lambda d: ", ".join(f"{k} {_pct(v)}" for k, v in d.items())  # noqa: E731
    return _claim(
        "weight scale matters: 0.01 too small, 1.0 too large, Xavier/He right", "seed 001 (initialisation)", ok,
        {"epochs": epochs, "accuracy": acc, "floor": floor},
        f"plain network after {epochs} epochs: {fmt(plain)} (the bad scales must trail the good ones by more "
        f"than {100 * floor:.1f} points)",
        t0,
    )


def claim_bn_init_resilience(
    split: Split, norm_factory: NormFactory, device: Any = "cpu", seed: int = 0, epochs: int = 5,
    study: dict[str, dict[str, Curve]] | None = None,
) -> ClaimResult:
    """Ioffe & Szegedy 2015 (section 3.3): batch norm makes training resilient to the weight scale.

    The same study as :func:`claim_init_scales`, judged for the network with
    batch norm: reproduced when, at each bad scale (0.01 and 1.0), batch norm
    ends within the test set's resolution of its own Xavier/He result.  The
    paper's own caveat applies: a layer's output is invariant to its weight
    scale, but its weight gradient shrinks as 1/scale, so with N(0, 1)
    weights the effective learning rate is far smaller and a short run can
    fall behind; the numbers show which happened.
    """
    t0 = time.perf_counter()
    study = study or _init_study(split, norm_factory, device, seed, epochs)
    acc = {who: {k: c.final_accuracy(1) for k, c in runs.items()} for who, runs in study.items()}
    bn, plain = acc["bn"], acc["no_bn"]
    good = min(bn["xavier"], bn["he"])
    floor = float(_binomial_floor(good, split.n_test, 2.326))
    rescued = {k: bn[k] >= good - floor for k in ("0.01", "1.0")}
    ok = all(rescued.values())
    fmt = lambda d: ", ".join(f"{k} {_pct(v)}" for k, v in d.items())  # noqa: E731
    why = ""
    if not rescued["1.0"]:
        why = (
            "; with N(0, 1) weights batch norm keeps the activations normalised but the gradients shrink by "
            "the weight scale, so at this learning rate it learns far more slowly"
        )
    return _claim(
        "batch norm makes training resilient to the weight scale", "Ioffe & Szegedy 2015, section 3.3", ok,
        {"epochs": epochs, "accuracy": acc, "floor": floor, "rescued": rescued},
        f"after {epochs} epochs with batch norm: {fmt(bn)}; without: {fmt(plain)}{why}",
        t0,
    )


def claim_deep_sigmoid(
    split: Split, norm_factory: NormFactory, device: Any = "cpu", seeds: Sequence[int] = (0,), epochs: int = 10,
    lr: float = 0.1,
) -> ClaimResult:
    """Ioffe & Szegedy section 4.1: a 3x100 sigmoid MLP trains faster and better with batch norm.

    The paper's network (three hidden layers of 100 sigmoid units, small
    Gaussian weights, here N(0, 0.01^2) -- the paper does not give the scale --,
    mini-batches of 60) trained for ``epochs`` with SGD at ``lr`` (not stated
    in the paper either; the paper ran 50,000 steps, about 50 epochs of full
    MNIST, so this is the early part of its Figure 1a).  Reproduced when batch
    norm ends higher by more than the test set resolves (binomial floor at
    99 %) and is never behind the plain network by more than that at any epoch.
    """
    t0 = time.perf_counter()
    p = Protocol(hidden=(100, 100, 100), activation="sigmoid", init="normal", init_scale=0.01,
                 batch_size=60, lr=lr, epochs=epochs, seeds=tuple(seeds))
    bn = [train(norm_factory, split, p, s, device, label="bn") for s in seeds]
    plain = [train(None, split, p, s, device, label="no-bn") for s in seeds]
    a_bn, a_plain = _final(bn), _final(plain)
    c_bn = _acc_matrix(bn, epochs).mean(axis=0)
    c_plain = _acc_matrix(plain, epochs).mean(axis=0)
    floor = float(_binomial_floor(a_bn, split.n_test, 2.326))
    never_behind = bool(np.all(c_bn >= c_plain - floor))
    ok = all(c.ok for c in bn) and a_bn > a_plain + floor and never_behind
    e_bn = olympic_mean(c.epochs_to(0.8) if c.ok else None for c in bn)
    e_plain = olympic_mean(c.epochs_to(0.8) if c.ok else None for c in plain)
    return _claim(
        "a deep sigmoid network trains faster and better with batch norm",
        "Ioffe & Szegedy 2015, section 4.1 (3x100 sigmoid MLP on MNIST)", ok,
        {"epochs": epochs, "lr": lr, "batch_size": 60, "final_bn": a_bn, "final_no_bn": a_plain,
         "epochs_to_80_bn": e_bn, "epochs_to_80_no_bn": e_plain,
         "curve_bn": c_bn.tolist(), "curve_no_bn": c_plain.tolist()},
        f"after {epochs} epochs: with batch norm {_pct(a_bn)}, without {_pct(a_plain)}; epochs to 80% "
        f"{_ep(e_bn)} vs {_ep(e_plain)}; batch norm {'never' if never_behind else 'at some epoch'} behind",
        t0,
    )


def claim_placement(
    split: Split, norm_factory: NormFactory, device: Any = "cpu", seeds: Sequence[int] = (0, 1, 2), epochs: int = 10
) -> ClaimResult:
    """Seed 002: batch norm before the ReLU is customary, but after it works too.

    Trains the seed's network with the norm before and after each ReLU (and
    without batch norm) for ``epochs`` and judges "after" against "before"
    with :func:`compare` (the same noise band as the convergence suite).
    Reproduced when "after" passes that comparison and both beat the plain
    network's final accuracy.
    """
    t0 = time.perf_counter()
    p = Protocol(epochs=epochs, seeds=tuple(seeds), final_window=min(3, epochs))
    before = [train(norm_factory, split, p, s, device, label="before") for s in seeds]
    after = [train(norm_factory, split, p.replace(placement="after"), s, device, label="after") for s in seeds]
    plain = [train(None, split, p, s, device, label="no-bn") for s in seeds]
    v = compare(after, before, plain, p, target_name="BN after ReLU")
    a_b, a_a, a_n = _final(before, p.final_window), _final(after, p.final_window), _final(plain, p.final_window)
    ok = v.outcome == "pass" and min(a_b, a_a) > a_n
    return _claim(
        "batch norm after the ReLU trains as well as before it", "seed 002", ok,
        {"epochs": epochs, "final_before": a_b, "final_after": a_a, "final_no_bn": a_n,
         "band": [v.final.get("band_low"), v.final.get("band_high")], "comparison": v.outcome},
        f"after {epochs} epochs: before ReLU {_pct(a_b)}, after {_pct(a_a)}, no batch norm {_pct(a_n)}; "
        f"'after' judged against 'before': {v.outcome} ({v.explanation.split(';')[0]})",
        t0,
    )


def claim_batch_regularisation(
    split: Split, norm_factory: NormFactory, device: Any = "cpu", seeds: Sequence[int] = (0, 1), epochs: int = 20,
    lr: float = 0.1, batch_size: int = 256, ghost_sizes: tuple[int, int] = (16, 256),
) -> ClaimResult:
    """Seed 004: batch statistics of small mini-batches are noisy, which regularises; large ones less so.

    Isolates batch norm's share: the optimiser's mini-batch is fixed at
    ``batch_size`` (256, lr 0.1, ``epochs`` epochs) and batch norm normalises
    ghost batches of 16 or of 256 rows (:class:`GhostNorm`), so only the
    noise of the statistics differs.  Regularisation is measured as the
    generalisation gap, test loss minus training loss, both in eval mode on
    the whole sets after the last epoch.  Reproduced when the gap is smaller
    with batch-norm batches of 16 for every seed.  For the record
    (``literal_batch_sizes``) it also trains the batch-norm network with
    ordinary mini-batches of 16 and of 256 for a quarter of the epochs at the
    protocol's lr 0.01; there the number of steps differs 16-fold too, so that
    is not the judged comparison.
    """
    t0 = time.perf_counter()
    small, large = ghost_sizes
    p = Protocol(epochs=epochs, lr=lr, batch_size=batch_size, eval_train=True, seeds=tuple(seeds))
    gaps: dict[int, list[float]] = {small: [], large: []}
    accs: dict[int, list[float]] = {small: [], large: []}
    train_accs: dict[int, list[float]] = {small: [], large: []}
    statuses = []
    for gsize in (small, large):
        def factory(n: int, g: int = gsize) -> nn.Module:
            return GhostNorm(norm_factory(n), g)

        for s in seeds:
            c = train(factory, split, p, s, device, label=f"ghost-{gsize}")
            statuses.append(c.status)
            if c.ok:
                gaps[gsize].append(c.test_loss[-1] - c.train_eval_loss[-1])
                accs[gsize].append(c.test_acc[-1])
                train_accs[gsize].append(c.train_eval_acc[-1])
    literal = {}
    for b in (small, large):
        q = Protocol(epochs=max(1, epochs // 4), batch_size=b, eval_train=True, seeds=(seeds[0],))
        c = train(norm_factory, split, q, seeds[0], device, label=f"batch-{b}")
        if c.ok:
            literal[f"batch_{b}"] = {
                "epochs": q.epochs, "test_acc": c.test_acc[-1], "train_acc": c.train_eval_acc[-1],
                "gap_loss": c.test_loss[-1] - c.train_eval_loss[-1],
            }
        else:
            literal[f"batch_{b}"] = {"status": c.status, "message": c.message}
    complete = all(s == "ok" for s in statuses)
    ok = complete and all(a < b for a, b in zip(gaps[small], gaps[large]))
    mean = lambda xs: float(np.mean(xs)) if xs else float("nan")  # noqa: E731
    return _claim(
        "small batches regularise through batch norm's noise (less with large batches)", "seed 004", ok,
        {"epochs": epochs, "lr": lr, "batch_size": batch_size, "gap_loss": gaps, "test_acc": accs,
         "train_acc": train_accs, "literal_batch_sizes": literal},
        f"batch of {batch_size}, batch norm over {small} vs {large} rows, {epochs} epochs: generalisation gap "
        f"(test - train loss) {mean(gaps[small]):.3f} vs {mean(gaps[large]):.3f}, test accuracy "
        f"{_pct(mean(accs[small]))} vs {_pct(mean(accs[large]))}, train accuracy {_pct(mean(train_accs[small]))} "
        f"vs {_pct(mean(train_accs[large]))}" + ("" if complete else f" (runs: {statuses})"),
        t0,
    )


def seed_claims(
    split: Split,
    device: Any = "cpu",
    *,
    norm_factory: NormFactory | None = None,
    protocol: Protocol | None = None,
    only: Iterable[str] | None = None,
    progress: Callable[[ClaimResult], None] | None = None,
    threads: int | None = 1,
) -> list[ClaimResult]:
    """Run the seed-claims study with ``norm_factory`` (default: the reference batch norm).

    Claims (names for ``only``): ``initial-loss``, ``overfit-batch``,
    ``bn-faster`` (uses ``protocol``, default the full tier on ``split``),
    ``lr-sweep``, ``init-scales``, ``init-resilience`` (one training study
    for both), ``deep-sigmoid``, ``placement``,
    ``batch-regularisation``.  Each returns a :class:`ClaimResult`; nothing
    raises for a failing norm layer (its runs are reported as crashed or
    diverged).  ``threads`` as for :func:`run_convergence`.  On the embedded
    digits the whole study takes one to two minutes on the 2-core machine.
    """
    f = norm_factory or _reference_factory
    shared: dict[str, Any] = {}

    def init_study() -> dict[str, dict[str, Curve]]:
        if "init" not in shared:
            t = time.perf_counter()
            shared["init"] = _init_study(split, f, device, 0, 5)
            shared["init_seconds"] = time.perf_counter() - t
        return shared["init"]

    studies: dict[str, Callable[[], ClaimResult]] = {
        "initial-loss": lambda: claim_initial_loss(split, f, device),
        "overfit-batch": lambda: claim_overfit_batch(split, f, device),
        "bn-faster": lambda: claim_bn_faster(split, norm_factory, device, protocol),
        "lr-sweep": lambda: claim_lr_sweep(split, f, device),
        "init-scales": lambda: claim_init_scales(split, f, device, study=init_study()),
        "init-resilience": lambda: claim_bn_init_resilience(split, f, device, study=init_study()),
        "deep-sigmoid": lambda: claim_deep_sigmoid(split, f, device),
        "placement": lambda: claim_placement(split, f, device),
        "batch-regularisation": lambda: claim_batch_regularisation(split, f, device),
    }
    names = list(studies) if only is None else list(only)
    unknown = [n for n in names if n not in studies]
    if unknown:
        raise ValueError(f"unknown claim(s) {unknown}; choose from {list(studies)}")
    out = []
    for name in names:
        with torch_threads(threads):
            r = studies[name]()
        r.seconds += shared.pop("init_seconds", 0.0)  # the shared study counts once, where it ran
        out.append(r)
        if progress is not None:
            progress(r)
    return out
