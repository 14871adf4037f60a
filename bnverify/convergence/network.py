"""The network the convergence experiments train, and the norm layers built into them.

:func:`build_mlp` builds seed 002's MLP around any norm layer factory; :func:`init_weights` gives
every variant of it (with or without batch norm, whatever norm layer) identical initial weights;
:class:`GhostNorm` varies the batch that batch norm sees; ``BUILTIN_FACTORIES`` names the built-in
networks (reference batch norm, ``torch.nn.BatchNorm1d``, no batch norm), whose curves do not
depend on the target.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from bnverify.convergence.protocol import (
    _ACTIVATIONS,
    _STREAM_BIASES,
    _STREAM_WEIGHTS,
    _derive_seed,
)

NormFactory = Callable[[int], nn.Module]


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
    seed: int = 0,
) -> nn.Sequential:
    """Seed 002's MLP: ``Linear -> [norm] -> act`` per hidden width, then ``Linear`` to the classes.

    ``norm_factory(width)`` builds one norm layer (``None``: no batch norm).
    ``placement="after"`` puts it after the activation instead.  A hidden
    linear layer has a bias only when a norm does not follow it directly (a
    bias before batch norm is cancelled by the mean subtraction); the output
    layer follows the seed, whose batch-norm network has a bias-free output
    layer (``Linear' w3``) and whose plain network has biases everywhere.
    Weights are set by :func:`init_weights` from ``seed``, independent of
    whatever the norm layers' constructors do.
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
    if placement not in ("before", "after"):
        raise ValueError(f"placement must be 'before' or 'after', got {placement!r}")
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        norm_next = norm_factory is not None and placement == "before"
        layers.append(nn.Linear(width, h, bias=not norm_next))
        if norm_factory is not None and placement == "before":
            layers.append(_as_module(norm_factory(h), h))
        layers.append(_ACTIVATIONS[activation]())
        if norm_factory is not None and placement == "after":
            layers.append(_as_module(norm_factory(h), h))
        width = h
    layers.append(nn.Linear(width, num_classes, bias=norm_factory is None))
    model = nn.Sequential(*layers)
    init_weights(model, seed, init, init_scale)
    return model


def _as_module(obj: Any, width: int) -> nn.Module:
    if not isinstance(obj, nn.Module):
        raise TypeError(f"norm factory returned {type(obj).__name__} for width {width}, expected a torch.nn.Module")
    return obj


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
