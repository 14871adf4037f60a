"""The gallery is what it claims: correct implementations are correct, every bug is a real bug.

(a) Each correct implementation agrees with the float64 oracle
    (``reference/batchnorm.py``) to rounding on training forward, backward with
    a random upstream gradient, eval forward/backward, 16-bit input, layouts,
    ill-conditioned input and the output contract; the torch ones pass
    ``gradcheck``.
(b) Each bug deviates from the oracle, far beyond rounding, on an input
    designed for it (``DEMOS[bug.id].deviates``), and agrees with the oracle
    where its mistake plays no part (``DEMOS[bug.id].agrees``): the gallery is
    genuinely buggy and otherwise sane.

No bnverify harness is involved: ``drive`` runs the targets directly.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import pytest
import torch

from tests.gallery.drive import Case, agree_tol, errors, expected, gradcheck_ok, kind_of, problems, run
from tests.gallery.registry import BACKWARD_CHECKS, CORRECT, FORWARD_BACKWARD_BUGS, FORWARD_CHECKS, resolve


@dataclass(frozen=True)
class Demo:
    deviates: tuple[Case, ...]  # the bug shows, far beyond rounding, on every one of these
    agrees: tuple[Case, ...]  # the bug plays no part here: it matches the oracle to rounding


def _c(scenario: str, shape: tuple[int, ...] = (8, 3, 4), dtype: str = "float64", **kw) -> Case:
    return Case(scenario, shape, dtype, **kw)


DEMOS: dict[str, Demo] = {
    # torch-module, forward
    "module-unbiased-normalization": Demo(
        (_c("train_fwd", (6, 3)),),
        (_c("eval_fwd", (6, 3)), _c("eval_bwd")),
    ),
    "module-hardcoded-eps": Demo(
        (_c("train_fwd", eps=0.1), _c("eval_fwd", eps=0.1)),
        (_c("train_fwd", eps=1e-5), _c("train_bwd", eps=1e-5), _c("eval_fwd", eps=1e-5)),
    ),
    "module-one-pass-variance": Demo(
        (_c("train_fwd", (16, 3, 5), "float32", data="ill"),),
        (_c("train_fwd", (16, 3, 5), "float32"), _c("train_bwd"), _c("eval_fwd", data="ill")),
    ),
    "module-ignores-strides": Demo(
        (
            _c("train_fwd", (4, 3, 5, 6), "float32", layout="channels_last"),
            _c("train_fwd", (4, 3, 5), "float32", layout="transposed"),
        ),
        (_c("train_fwd", (4, 3, 5, 6), "float32"), _c("train_bwd", (4, 3, 5, 6)), _c("eval_fwd", (4, 3, 5, 6))),
    ),
    "module-flatten-rows": Demo(
        (_c("train_fwd", (4, 3, 5)),),
        (_c("train_fwd", (8, 3)), _c("train_bwd", (8, 3)), _c("eval_fwd", (8, 3))),
    ),
    "module-per-position-stats": Demo(
        (_c("train_fwd", (4, 3, 5, 6)),),
        (_c("train_fwd", (8, 3)), _c("train_bwd", (8, 3)), _c("eval_fwd", (4, 3, 5, 6))),
    ),
    "module-float32-output": Demo(
        (_c("contract", dtype="float64"), _c("contract", dtype="float16")),
        (_c("train_fwd", dtype="float32"), _c("train_bwd", dtype="float32"), _c("eval_fwd", dtype="float32")),
    ),
    "module-inplace-input": Demo(
        (_c("contract", dtype="float32"),),
        (_c("train_fwd", dtype="float32"), _c("train_bwd"), _c("eval_fwd")),
    ),
    "module-eval-batch-stats": Demo(
        (_c("eval_fwd"), _c("eval_bwd")),
        (_c("train_fwd"), _c("train_bwd")),
    ),
    "module-eval-eps-outside-sqrt": Demo(
        (_c("eval_fwd", eps=0.1),),
        (_c("train_fwd", eps=0.1), _c("train_bwd", eps=0.1)),
    ),
    # torch-module, backward
    "module-backward-stats-constant": Demo(
        (_c("train_bwd"),),
        (_c("train_fwd"), _c("eval_bwd")),
    ),
    "module-backward-no-variance-term": Demo(
        (_c("train_bwd"),),
        (_c("train_fwd"), _c("eval_bwd")),
    ),
    "module-backward-bessel": Demo(
        (_c("train_bwd", (4, 3)),),
        (_c("train_fwd", (4, 3)), _c("eval_bwd", (4, 3))),
    ),
    "module-backward-param-grad-mean-positions": Demo(
        (_c("train_bwd", (2, 3, 4, 5)),),
        (_c("train_bwd", (8, 3)), _c("train_fwd", (2, 3, 4, 5)), _c("train_bwd", (2, 3, 4, 5), affine=False)),
    ),
    "module-eval-backward-train-formula": Demo(
        (_c("eval_bwd"),),
        (_c("eval_fwd"), _c("train_bwd")),
    ),
    "module-backward-one-pass-recompute": Demo(
        (_c("train_bwd", (16, 3, 5), "float32", data="ill"),),
        (_c("train_fwd", (16, 3, 5), "float32", data="ill"), _c("train_bwd", (16, 3, 5))),
    ),
    "module-backward-input-dtype-recompute": Demo(
        (_c("train_bwd", (64, 2, 8, 8), "float16", data="large"),),
        (_c("train_fwd", (64, 2, 8, 8), "float16", data="large"), _c("train_bwd", (16, 3, 5), "float32"),
         _c("train_bwd")),
    ),
    # torch-functional
    "functional-addcmul-swapped": Demo(
        (_c("train_fwd"), _c("eval_fwd")),
        (_c("train_fwd", affine=False), _c("train_bwd", affine=False), _c("eval_fwd", affine=False)),
    ),
    "functional-eps-outside-sqrt": Demo(
        (_c("train_fwd", eps=0.1),),
        (_c("train_fwd", dtype="float32", eps=1e-7), _c("train_bwd", dtype="float32", eps=1e-7)),
    ),
    "functional-fp16-accumulation": Demo(
        (_c("train_fwd", (64, 2, 8, 8), "float16", data="large"),),
        (
            _c("train_fwd", (64, 2, 8, 8), "float32", data="large"),
            _c("train_fwd", dtype="float16"),
            _c("train_bwd"),
        ),
    ),
    "functional-no-eps-in-training": Demo(
        (_c("train_fwd", dtype="float32", data="constant"),),
        (_c("train_fwd", dtype="float32", eps=1e-7), _c("eval_fwd", data="constant")),
    ),
    # numpy-cs231n
    "cs231n-ddof1": Demo(
        (_c("train_fwd", (6, 4)),),
        (_c("eval_fwd", (6, 4)), _c("eval_bwd", (6, 4))),
    ),
    "cs231n-dgamma-from-x": Demo(
        (_c("train_bwd", (8, 4)),),
        (_c("train_fwd", (8, 4)), _c("train_bwd", (8, 4), affine=False)),
    ),
    "cs231n-dx-of-centered": Demo(
        (_c("train_bwd", (8, 4)),),
        (_c("train_fwd", (8, 4)), _c("eval_bwd", (8, 4))),
    ),
    "cs231n-float64-output": Demo(
        (_c("contract", (8, 4), "float32"),),
        (_c("train_fwd", (8, 4), "float32"), _c("train_bwd", (8, 4))),
    ),
    "cs231n-dx-double-mean": Demo(
        (_c("train_bwd", (8, 4)),),
        (_c("train_fwd", (8, 4)), _c("eval_bwd", (8, 4))),
    ),
    "cs231n-test-mode-bessel": Demo(
        (_c("eval_fwd", (4, 3)),),
        (_c("train_fwd", (4, 3)), _c("train_bwd", (4, 3))),
    ),
    "cs231n-spatial-reshape": Demo(
        (_c("train_fwd", (2, 3, 4, 5)),),
        (_c("train_fwd", (8, 3)), _c("train_bwd", (8, 3)), _c("eval_fwd", (8, 3))),
    ),
}


def deviation_tol(case: Case) -> float:
    """How far a demonstration must miss: 100 times what a correct implementation reaches, at least 1e-3."""
    return max(100 * agree_tol(case), 1e-3)


# --------------------------------------------------------------------------- the registry itself


def test_registry_is_well_formed() -> None:
    ids = [b.id for b in FORWARD_BACKWARD_BUGS]
    assert len(ids) == len(set(ids)), "bug ids must be unique"
    assert len(ids) >= 20
    kinds = [kind_of(resolve(b.target), b.kind) for b in FORWARD_BACKWARD_BUGS]
    assert kinds.count("numpy-cs231n") >= 4
    assert kinds.count("torch-functional") >= 3
    assert kinds.count("torch-module") >= 3
    assert set(DEMOS) == set(ids), "every bug needs a demonstration, and only bugs have one"
    checks = {"forward": FORWARD_CHECKS, "backward": BACKWARD_CHECKS}
    for bug, kind in zip(FORWARD_BACKWARD_BUGS, kinds):
        assert bug.suites and set(bug.suites) <= set(checks), bug.id
        assert 1 <= len(bug.catches) <= 2, bug.id
        for check in bug.catches:
            assert any(check in checks[s] for s in bug.suites), f"{bug.id}: {check} is in none of {bug.suites}"
        if kind == "numpy-cs231n":
            assert "test_gradcheck" not in bug.catches, bug.id
        assert bug.bug_class and bug.description, bug.id


@pytest.mark.parametrize("bug", FORWARD_BACKWARD_BUGS, ids=lambda b: b.id)
def test_bug_target_loads_as_its_kind(bug) -> None:
    obj = resolve(bug.target)
    doc = inspect.getdoc(obj) or ""
    assert doc.startswith("Bug:"), f"{bug.target} needs a docstring naming the bug"
    if bug.kind is None:
        assert kind_of(obj, None) in ("torch-module", "torch-functional")
    else:
        assert bug.kind == "numpy-cs231n"
        assert callable(obj.batchnorm_forward) and callable(obj.batchnorm_backward)
        assert not (inspect.isclass(obj) and issubclass(obj, torch.nn.Module))


# --------------------------------------------------------------------------- (a) correct implementations

_RANKS = ((8, 3), (4, 3, 5), (2, 3, 4, 5), (2, 3, 2, 3, 4))
CORRECT_CASES: tuple[Case, ...] = (
    *(Case("train_fwd", s, d, eps=1e-3) for s in _RANKS for d in ("float64", "float32")),
    *(Case("train_bwd", s, "float64", eps=0.1) for s in _RANKS),
    Case("train_bwd", (4, 3, 5), "float32"),
    Case("train_fwd", (4, 3, 5), affine=False),
    Case("train_bwd", (4, 3, 5), affine=False),
    *(Case("eval_fwd", s, "float64", eps=0.05) for s in _RANKS),
    *(Case("eval_bwd", s, "float64") for s in ((8, 3), (2, 3, 4, 5))),
    *(Case(sc, (64, 2, 8, 8), d, data="large") for sc in ("train_fwd", "train_bwd") for d in ("float16", "bfloat16")),
    *(Case("train_fwd", (4, 3, 5, 6), "float32", layout=lay) for lay in ("channels_last", "transposed", "sliced")),
    Case("train_bwd", (4, 3, 5, 6), "float64", layout="channels_last"),
    *(Case(sc, (16, 3, 5), d, data=data) for sc in ("train_fwd", "train_bwd")
      for d in ("float64", "float32") for data in ("ill", "constant")),
    *(Case("contract", (2, 3, 4, 5), d) for d in ("float64", "float32", "float16")),
)


def _applies(kind: str | None, case: Case) -> bool:
    """The numpy-cs231n kind takes 2-D input (4-D through ``spatial_*``), contiguous, numpy dtypes."""
    if kind != "numpy-cs231n":
        return True
    return len(case.shape) in (2, 4) and case.dtype != "bfloat16" and case.layout == "contiguous"


_CORRECT_PARAMS = [
    pytest.param(target, kind, case, id=f"{target.split(':')[1]}-{case.label()}")
    for target, kind in CORRECT
    for case in CORRECT_CASES
    if _applies(kind, case)
]


@pytest.mark.parametrize(("target", "kind", "case"), _CORRECT_PARAMS)
def test_correct_matches_oracle(target: str, kind: str | None, case: Case) -> None:
    outcome = run(resolve(target), kind, case)
    assert problems(case, outcome) == []


@pytest.mark.parametrize("target", [t for t, k in CORRECT if k is None])
def test_correct_passes_gradcheck(target: str) -> None:
    assert gradcheck_ok(resolve(target), None)


def test_correct_custom_function_double_backward() -> None:
    """The hand-written backward recomputes from the saved input, so second derivatives are right too."""
    from tests.gallery.correct import BatchNorm

    mod = BatchNorm(2, dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t: mod(t), (x,))


def test_correct_running_stats_follow_torch() -> None:
    """The correct module's running statistics after a few batches equal torch.nn.BatchNorm2d's."""
    from tests.gallery.correct import BatchNorm, BatchNormOps

    gen = torch.Generator().manual_seed(2)
    batches = [torch.randn(4, 3, 5, 5, generator=gen, dtype=torch.float64) * 2 + 1 for _ in range(3)]
    for momentum in (0.1, None):
        want = torch.nn.BatchNorm2d(3, momentum=momentum, dtype=torch.float64)
        for xb in batches:
            want(xb)
        for cls in (BatchNorm, BatchNormOps):
            got = cls(3, momentum=momentum, dtype=torch.float64)
            for xb in batches:
                got(xb)
            torch.testing.assert_close(got.running_mean, want.running_mean)
            torch.testing.assert_close(got.running_var, want.running_var)
            assert int(got.num_batches_tracked) == 3


# --------------------------------------------------------------------------- (b) every bug is a bug


@pytest.mark.parametrize("bug", FORWARD_BACKWARD_BUGS, ids=lambda b: b.id)
def test_bug_deviates_on_its_demonstration(bug) -> None:
    obj = resolve(bug.target)
    for case in DEMOS[bug.id].deviates:
        outcome = run(obj, bug.kind, case)
        found = problems(case, outcome, tol=deviation_tol(case))
        assert found, (
            f"{bug.id} matches the oracle on {case.label()} (errors {errors(outcome, expected(case))}); "
            "the demonstration does not show the bug"
        )


@pytest.mark.parametrize("bug", FORWARD_BACKWARD_BUGS, ids=lambda b: b.id)
def test_demonstration_is_fair(bug) -> None:
    """The correct implementations of the bug's kind pass its demonstration: the input is not the problem."""
    kind = kind_of(resolve(bug.target), bug.kind)
    peers = [(t, k) for t, k in CORRECT if kind_of(resolve(t), k) == kind]
    assert peers
    for target, peer_kind in peers:
        for case in DEMOS[bug.id].deviates:
            assert problems(case, run(resolve(target), peer_kind, case)) == [], f"{target} on {case.label()}"


@pytest.mark.parametrize("bug", FORWARD_BACKWARD_BUGS, ids=lambda b: b.id)
def test_bug_is_otherwise_correct(bug) -> None:
    obj = resolve(bug.target)
    for case in DEMOS[bug.id].agrees:
        assert problems(case, run(obj, bug.kind, case)) == [], f"{bug.id} on {case.label()}"


@pytest.mark.parametrize(
    "bug", [b for b in FORWARD_BACKWARD_BUGS if "test_gradcheck" in b.catches], ids=lambda b: b.id
)
def test_backward_bug_fails_gradcheck(bug) -> None:
    assert not gradcheck_ok(resolve(bug.target), bug.kind)
