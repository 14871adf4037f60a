"""The built-in targets: ``torch`` (torch.nn.BatchNorm1d/2d/3d by rank) and ``reference``."""

from __future__ import annotations

from typing import Callable

import torch

from bnverify.adapter import _TORCH_BN_BY_RANK, BNTarget
from bnverify.conventions import get_convention


def torch_target() -> BNTarget:
    """torch.nn.BatchNorm1d for 2-D and 3-D input, BatchNorm2d for 4-D, BatchNorm3d for 5-D."""
    return BNTarget(
        name="torch.nn.BatchNorm", kind="torch-module", obj=torch.nn.BatchNorm2d, spec="torch",
        convention=get_convention("torch"), version=torch.__version__, by_rank=dict(_TORCH_BN_BY_RANK),
    )


def reference_target() -> BNTarget:
    """The project's torch reference, ``bnverify.reference.batchnorm_torch.BatchNorm``."""
    from bnverify import __version__
    from bnverify.reference.batchnorm_torch import BatchNorm

    return BNTarget(
        name="bnverify.reference.BatchNorm", kind="torch-module", obj=BatchNorm, spec="reference",
        convention=get_convention("torch"), version=__version__,
    )


torch_target.__bnverify_target_factory__ = True  # type: ignore[attr-defined]
reference_target.__bnverify_target_factory__ = True  # type: ignore[attr-defined]

ALIASES: dict[str, Callable[[], BNTarget]] = {"torch": torch_target, "reference": reference_target}
