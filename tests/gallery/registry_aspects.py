"""Convention aspects and the causes added with them (``tests/test_aspects.py``).

``CORRECT_ASPECTS``: correct targets that differ from their named convention in one aspect: each
must fail ``check`` without its flags, with the flag named in the failure, and pass with them.
``CAUSE_BUGS``: a bug per new cause, the check that must fail on it and the words its likely
cause must contain.  They are kept out of the ``*_BUGS`` tuples that ``tests/test_broken_targets.py``
runs at full size: these run with few examples and only the check concerned.
"""

from __future__ import annotations

from dataclasses import dataclass

from tests.gallery.registry import Bug

__all__ = ["Aspect", "CORRECT_ASPECTS", "CAUSE_BUGS"]

_A = "tests.gallery.correct_aspects:"
_B = "tests.gallery.buggy_aspects:"
_C = "tests.gallery.course."


@dataclass(frozen=True)
class Aspect:
    target: str
    kind: str | None
    suite: str
    check: str  # the check that fails without the flags
    flags: tuple[str, ...]  # bnverify check flags that accept the target
    named: str  # what the failure says without the flags


CORRECT_ASPECTS: tuple[Aspect, ...] = (
    Aspect(_A + "BiasedVarBatchNorm", None, "modes", "test_running_stats", ("--running-var", "biased"),
           "if that is intended, pass --running-var biased (as keras, flax, cs231n do)"),
    Aspect(_A + "Eps1e6BatchNorm", None, "modes", "test_constructor_defaults", ("--eps", "1e-6"),
           "if that is intended, pass --eps 1e-6"),
    Aspect(_A + "Momentum001BatchNorm", None, "modes", "test_constructor_defaults", ("--momentum", "0.01"),
           "if that is intended, pass --momentum 0.01"),
    Aspect(_A + "DecayMomentumBatchNorm", None, "modes", "test_running_stats",
           ("--momentum-meaning", "old-decay", "--momentum", "0.9"),
           "if that is intended, pass --momentum-meaning old-decay (as keras, flax, cs231n do)"),
    Aspect(_A + "cs231n_eps_1e6", "numpy-cs231n", "modes", "test_bn_param_defaults", ("--eps", "1e-6"),
           "the outputs match eps = 1e-06 everywhere, not the cs231n default 1e-05: the target's default eps is "
           "1e-06; if that is intended, pass --eps 1e-6"),
)

CAUSE_BUGS: tuple[tuple[Bug, str], ...] = (
    (Bug("aspects-spatial-no-transpose", _B + "NoTransposeSpatialBatchNorm", None, ("forward",),
         ("test_forward_train",), "B18", "I flatten (N, C, H, W) with x.reshape(-1, C) and normalise its columns."),
     "reshaped to (-1, C) without moving the channel axis last"),
    (Bug("aspects-course-spatial-no-transpose", _C + "bug_spatial_no_transpose", "numpy-cs231n", ("forward",),
         ("test_forward_train",), "B18", "My spatial_batchnorm_forward calls the vanilla layer on x.reshape(-1, C)."),
     "(N, C, H, W) input reshaped to (-1, C) without moving the channel axis last"),
    (Bug("aspects-row-params", _B + "RowParamsBatchNorm", None, ("modes",), ("test_fresh_defaults",), "shape",
         "My gamma and beta are nn.Parameter(torch.ones(1, C)), as in the textbook."),
     "parameters kept as (1, C) rows that broadcast against the input"),
    (Bug("aspects-var-plus-eps", _B + "VarPlusEpsBatchNorm", None, ("modes",), ("test_running_stats",), "B1",
         "I add eps to the batch variance once and average that into running_var."),
     "the running variance accumulates var + eps"),
    (Bug("aspects-course-var-plus-eps", _C + "bug_running_var_eps", "numpy-cs231n", ("modes",),
         ("test_running_stats",), "B1", "My sample_var includes eps, and I average it into running_var."),
     "running_var matches an average of var_B + eps"),
)
