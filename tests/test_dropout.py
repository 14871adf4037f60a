"""Meta-tests of the dropout suite: torch's Dropout and a direct dropout pass; realistic bugs fail."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bnverify.reference import dropout as ref
from bnverify.runner import check


class DirectDropout(nn.Module):
    """Correct direct dropout (seed 001, "Rezim 1"): mask in training, multiply by (1 - p) at test time."""

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return x * (torch.rand_like(x) >= self.p).to(x.dtype)
        return x * (1 - self.p)


class NoScaleDropout(nn.Module):
    """Bug: drops in training, identity in eval, never scales (neither direct nor inverted)."""

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (torch.rand_like(x) >= self.p).to(x.dtype) if self.training else x


class KeepProbDropout(nn.Module):
    """Bug: cs231n's p (keep probability) under torch's name: keeps with probability p, scales by 1/p."""

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p in (0.0, 1.0):
            return x if self.p < 1 or not self.training else torch.zeros_like(x)
        return x * (torch.rand_like(x) < self.p).to(x.dtype) / self.p


class EvalDropsDropout(nn.Module):
    """Bug: uses ``torch.nn.functional.dropout(x, p)`` whose ``training`` defaults to True: drops in eval."""

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.dropout(x, self.p)


class FixedSeedDropout(nn.Module):
    """Bug: a generator seeded once per call with the same seed: the same mask every time."""

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        g = torch.Generator().manual_seed(1234)
        keep = torch.rand(x.shape, generator=g) >= self.p
        return x * keep.to(x.dtype) / (1 - self.p) if self.p < 1 else torch.zeros_like(x)


class RowMaskDropout(nn.Module):
    """Bug: one mask row broadcast over the batch (``rand(1, features)``): positions are not independent."""

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        keep = torch.rand((1,) + tuple(x.shape[1:])) >= self.p
        return x * keep.to(x.dtype) / (1 - self.p) if self.p < 1 else torch.zeros_like(x)


_T = "tests.test_dropout:"
BUGS = [
    ("NoScaleDropout", "test_scaling"),
    ("KeepProbDropout", "test_drop_rate"),
    ("EvalDropsDropout", "test_scaling"),
    ("FixedSeedDropout", "test_independent_masks"),
    ("RowMaskDropout", "test_independent_masks"),
]


def _failed(summary):
    return {r.check.split("[")[0]: r.message for r in summary.results if r.failed}


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("target,convention", [("torch.nn:Dropout", None), ("torch.nn:Dropout", "inverted"),
                                               (_T + "DirectDropout", "direct")])
def test_correct_dropout_passes(target, convention, seed):
    code, summary = check(target, kind="torch-dropout", convention=convention, seed=seed)
    assert code == 0, _failed(summary)
    assert {r.suite for r in summary.results} == {"dropout"}


@pytest.mark.parametrize("name,catches", BUGS)
def test_bug_is_caught(name, catches):
    code, summary = check(_T + name, kind="torch-dropout", seed=0)
    failed = _failed(summary)
    assert code == 1 and catches in failed, f"{name}: failed {sorted(failed)}"


def test_direct_under_default_names_the_convention():
    code, summary = check(_T + "DirectDropout", kind="torch-dropout", seed=0)
    assert code == 1
    assert "--convention direct" in _failed(summary)["test_scaling"]


def test_plain_module_stays_torch_module():
    from bnverify.loading import load_target

    assert load_target(_T + "DirectDropout").kind == "torch-module"
    assert load_target(_T + "DirectDropout", kind="torch-dropout").kind == "torch-dropout"


def test_reference_direct_and_inverted_have_equal_expectation():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(200_000)
    p = 0.4
    keep = ref.make_mask(rng, x.shape, p)
    inv = ref.dropout_train(x, keep, p, "inverted")
    direct = ref.dropout_train(x, keep, p, "direct")
    np.testing.assert_allclose(inv, direct / (1 - p))
    np.testing.assert_allclose(ref.dropout_eval(x, p, "direct"), (1 - p) * x)
    np.testing.assert_array_equal(ref.dropout_eval(x, p, "inverted"), x)
    assert abs(keep.mean() - (1 - p)) < 5 * np.sqrt(p * (1 - p) / x.size)
