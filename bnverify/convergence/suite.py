"""What the suites that train the target (convergence, seed claims) share: the target as a layer, and the protocol."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from bnverify.adapter import BNTarget, NotSupported, layer_factory
from bnverify.convergence.network import NormFactory
from bnverify.convergence.protocol import Protocol


def training_setup(target: BNTarget, device: str, config: Any, split: Any) -> tuple[NormFactory, Protocol]:
    """``(layer factory, protocol)`` for the suites that train the target inside a network.

    Skips when CUDA is asked for but missing, or when the target cannot be used as a layer.
    """
    if device.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("CUDA is not available on this machine")
    try:
        factory = layer_factory(target, device=device)
    except NotSupported as exc:
        pytest.skip(f"the target cannot be used as a layer here: {exc}")
    protocol = Protocol.for_suite(
        split, config.getoption("bn_convergence_epochs"), config.getoption("bn_convergence_seeds")
    )
    return factory, protocol
