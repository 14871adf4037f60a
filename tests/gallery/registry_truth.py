"""Bugs whose failures must name the right cause or none: ``tests/gallery/buggy_truth.py``.

``CausedBug`` adds to the gallery's ``Bug`` what each failing check must and must not print: a cause is
named only when its hypothesis reproduces the target's output, so a wrong one (a default eps of 1e-10,
"eval not using batch statistics", "sign dependence", 16-bit overflow for a NaN that float32 input gives
too) must be absent.  ``passes`` names checks that must pass: what the bug does not touch.

``AUDIT_BUGS`` pairs, for each cause sentence of ``bnverify.diagnose`` that simulates its hypothesis, a bug
whose failure it reproduces (the sentence is printed) with a bug whose failure looks alike but that it
does not reproduce (the sentence is absent).  Where a check hands its evidence to the diagnosis only once
the suite calls the function named in ``wired``, the failure says what was observed until then
(``OBSERVED``), and ``tests/test_diagnosis_audit.py`` requires the reproduced sentence once it does.
"""

from __future__ import annotations

from dataclasses import dataclass

from tests.gallery.registry import Bug

__all__ = ["AUDIT_BUGS", "CausedBug", "TRUTH_BUGS", "NEUTRAL", "OBSERVED"]

NEUTRAL = "no known bug pattern reproduces this output"
"""The line of a failure that no hypothesis explains."""

OBSERVED = "observed, not a diagnosis"
"""The tail of a fixed sentence that says what a check saw (``bnverify.diagnose.common.observed``)."""


@dataclass(frozen=True)
class CausedBug(Bug):
    # check -> (phrases of which at least one must be in its failure, phrases none of which may be)
    expect: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = ()
    passes: tuple[str, ...] = ()
    # check -> (the diagnose function, as "module.function", that the suite must call with the evidence; the
    # phrase the failure must print once it does; None where no cause may be named either way)
    wired: tuple[tuple[str, str, str | None], ...] = ()


_T = "tests.gallery.buggy_truth:"
_EPS_INSIDE = "eps belongs inside the square root"

TRUTH_BUGS: tuple[Bug, ...] = (
    CausedBug(
        "truth-eps-outside-sqrt", _T + "EpsOutsideSqrtBatchNorm", None, ("modes", "invariance"),
        ("test_no_tracking", "test_scale_negative"), "B23",
        "I divide by sqrt(var) + eps in training and in eval, the way other layers add eps to a denominator.",
        expect=(
            ("test_no_tracking", (_EPS_INSIDE,), ("eval must use the batch's own statistics",)),
            ("test_scale_negative", (_EPS_INSIDE,), ("depends on the sign", "layer norm", "both ends")),
        ),
        passes=("test_constructor_defaults",),  # its defaults are torch's: 1e-5 and 0.1, measured as such
    ),
    CausedBug(
        "truth-nan-above-64", _T + "NaNAboveBatch64BatchNorm", None, ("forward",),
        ("test_forward_half",), "tile",
        "My kernel keeps per-sample partial sums in a tile of 64 rows; larger batches read uninitialised rows.",
        expect=(
            ("test_forward_half", ("16-bit overflow does not explain it",),
             ("sums and sums of squares kept in float16", "cancellation", "E[x^2] - E[x]^2")),
        ),
        passes=("test_forward_train",),
    ),
)

_M = "tests.gallery.buggy_modes:"
_I = "tests.gallery.buggy_invariance:"
_F = "tests.gallery.buggy_modules:"
_C = "tests.gallery.course."
_NP = "numpy-cs231n"
_MODES = ("modes",)


def _pair(id_: str, target: str, kind: str | None, suite: str, check: str, bug_class: str, description: str,
          present: tuple[str, ...], absent: tuple[str, ...], wired: tuple[str, str | None] | None = None) -> CausedBug:
    return CausedBug(id_, target, kind, (suite,), (check,), bug_class, description,
                     expect=((check, present, absent),),
                     wired=((check, wired[0], wired[1]),) if wired else ())


_COUNTER = "modes.counter"
_FRESH = "modes.fresh_defaults"
_EVAL_UPD = "modes.eval_updates"
_SWITCH = "modes.mode_switch"
_CACHE = "modes.eval_cache"
_ONE = "modes.single_value_nonfinite"
_NOTRACK = "modes.no_tracking_eval"
_SD = "modes.state_dict_buffers"
_LAYOUT = "forward.layout_output"
_BNPARAM = "modes.bn_param_defaults"
_FLOOR = "max(sqrt(var + eps), 0.001)"
_UNGUARDED = "not guarded by the training flag"

AUDIT_BUGS: tuple[Bug, ...] = (
    # a floor on the std: simulated with the floor the output implies (forward.train_output)
    _pair("audit-std-floor", _I + "StdFloorBatchNorm", None, "invariance", "test_scale_exact", "B15",
          "I clamp the std: sqrt(var + eps).clamp(min=1e-3).", (_FLOOR,), ("depends on the sign",)),
    _pair("audit-std-plus-constant", _T + "StdPlusConstantBatchNorm", None, "invariance", "test_scale_exact", "B15",
          "I divide by sqrt(var + eps) + 1e-3.", (NEUTRAL, OBSERVED), ("clamped from below", _FLOOR)),
    # num_batches_tracked: the whole sequence of counts
    _pair("audit-counter-never", _M + "CounterNotIncrementedBatchNorm", None, "modes", "test_num_batches_tracked",
          "B26", "The num_batches_tracked.add_(1) got lost in a refactor.", ("never incremented", OBSERVED),
          ("counts eval calls too", "counts every forward call"), (_COUNTER, "never incremented")),
    _pair("audit-counter-eval", _T + "CountsEvalCallsBatchNorm", None, "modes", "test_num_batches_tracked", "B26",
          "My num_batches_tracked.add_(1) sits before the training branch.", ("counts every forward call", OBSERVED),
          ("never incremented",), (_COUNTER, "counts every forward call")),
    # fresh defaults: fills predict every value
    _pair("audit-zeros-running-var", _M + "ZerosRunningVarBatchNorm", None, "modes", "test_fresh_defaults", "B8",
          "I copied the running_mean line for running_var.", ("filled with zeros like running_mean", OBSERVED),
          ("torch.empty", "swapped"), (_FRESH, "filled with zeros like running_mean")),
    _pair("audit-half-running-var", _T + "HalfRunningVarBatchNorm", None, "modes", "test_fresh_defaults", "B8",
          "My running_var starts at 0.5.", (NEUTRAL, OBSERVED), ("torch.empty", "swapped", "filled with zeros"),
          (_FRESH, None)),
    # statistics that change in eval: a training update per eval call
    _pair("audit-eval-updates", _M + "EvalUpdatesStatsBatchNorm", None, "modes", "test_eval_uses_running_stats",
          "B10", "My update is not guarded by self.training.", (_UNGUARDED, OBSERVED), (),
          (_EVAL_UPD, _UNGUARDED)),
    _pair("audit-eval-adapts", _T + "EvalAdaptsStatsBatchNorm", None, "modes", "test_eval_uses_running_stats", "B10",
          "In eval I blend each batch into the statistics with weight 0.5.", (NEUTRAL, OBSERVED), (_UNGUARDED,),
          (_EVAL_UPD, None)),
    # the state before an eval step of a train/eval sequence
    _pair("audit-skip-after-eval", _T + "SkipUpdateAfterEvalBatchNorm", None, "modes", "test_mode_toggling",
          "seed-000", "The first training step after eval does not update.", ("step that follows an eval step skipped",
                                                                               OBSERVED),
          ("update on every eval call too",), (_SWITCH, "step that follows an eval step skipped")),
    _pair("audit-half-after-eval", _T + "HalfUpdateAfterEvalBatchNorm", None, "modes", "test_mode_toggling",
          "seed-000", "The first training step after eval uses half the momentum.", (NEUTRAL, OBSERVED),
          ("skipped", "update on every eval call too"), (_SWITCH, None)),
    # a later eval output: earlier statistics
    _pair("audit-cached-fold", _M + "CachedFoldBatchNorm", None, "modes", "test_mode_toggling", "seed-000",
          "I cache the folded scale/shift on the first eval call.", ("held at eval step", OBSERVED), (),
          (_CACHE, "held at eval step")),
    _pair("audit-fold-ema", _T + "FoldEmaBatchNorm", None, "modes", "test_mode_toggling", "seed-000",
          "I average the folded scale/shift over eval calls.", (NEUTRAL, OBSERVED), ("held at eval step", "caches"),
          (_CACHE, None)),
    # one value per channel: the unbiased factor at m = 1
    _pair("audit-single-value-unbiased", _T + "SingleValueUnbiasedBatchNorm", None, "modes",
          "test_single_value_per_channel", "B13", "One value per channel: m/(m-1) = 1/0 in running_var.",
          ("m/(m-1) with m=1 (1/0) makes it", OBSERVED), (), (_ONE, "m/(m-1) with m=1 (1/0) makes it")),
    _pair("audit-single-value-marks-nan", _T + "SingleValueMarksNaNBatchNorm", None, "modes",
          "test_single_value_per_channel", "B13", "One value per channel: I set both statistics to NaN.",
          ("returned without an error",), ("(1/0) makes it", "m/(m-1) with m=1 is 1/0"), (_ONE, None)),
    # track_running_stats=False: eval with a fresh module's statistics
    _pair("audit-no-track-fresh", _T + "NoTrackEvalFreshStatsBatchNorm", None, "modes", "test_no_tracking", "B9",
          "Without buffers, eval normalises with mean 0 and variance 1.", ("a fresh module's running statistics",
                                                                           OBSERVED), (),
          (_NOTRACK, "a fresh module's running statistics")),
    _pair("audit-no-track-double-var", _T + "NoTrackEvalDoubleVarBatchNorm", None, "modes", "test_no_tracking", "B9",
          "Without buffers, eval uses twice the batch variance.", (NEUTRAL, OBSERVED),
          ("fresh module", "exactly like training"), (_NOTRACK, None)),
    # state_dict without the statistics: where the module keeps them, by inspection
    _pair("audit-stats-not-buffers", _M + "StatsNotBuffersBatchNorm", None, "modes", "test_state_dict_roundtrip", "B8",
          "I keep running_mean/var as plain attributes.", ("plain tensor attributes", OBSERVED), ("persistent=False",),
          (_SD, "plain tensor attributes")),
    _pair("audit-non-persistent", _T + "NonPersistentStatsBatchNorm", None, "modes", "test_state_dict_roundtrip", "B8",
          "My buffers are registered with persistent=False.", ("persistent=False", OBSERVED),
          ("plain tensor attribute",), (_SD, "registered with persistent=False")),
    _pair("audit-state-dict-filter", _T + "StateDictFilterBatchNorm", None, "modes", "test_state_dict_roundtrip", "B8",
          "My state_dict leaves the statistics out.", (NEUTRAL, OBSERVED),
          ("persistent=False", "plain tensor attribute", "register_buffer"), (_SD, None)),
    # non-contiguous input: the storage read with contiguous offsets
    _pair("audit-ignores-strides", _F + "IgnoresStridesBatchNorm", None, "forward", "test_forward_layouts", "B18",
          "My kernel indexes the data pointer as contiguous NCHW.", ("storage read with contiguous", OBSERVED), (),
          (_LAYOUT, "storage read with contiguous")),
    _pair("audit-noncontiguous-no-eps", _T + "NonContiguousNoEpsBatchNorm", None, "forward", "test_forward_layouts",
          "B18", "My fast path for non-contiguous input forgets eps.", ("normalisation without eps",),
          ("storage read with contiguous", "ignores strides"), (_LAYOUT, None)),
    # numpy-cs231n: a bn_param without momentum: the default momentum that reproduces the statistics
    _pair("audit-course-default-momentum", _C + "bug_default_momentum", _NP, "modes", "test_bn_param_defaults", "B4",
          "bn_param.get('momentum', 0.1), as in PyTorch.", ("pass --momentum 0.1 ", "the default momentum is not 0.9"),
          ("--momentum-meaning",), (_BNPARAM, "pass --momentum 0.1 (momentum as the decay of the old value)")),
    _pair("audit-cs231n-default-099", _T + "Cs231nDefaultMomentumOnePerCent", _NP, "modes", "test_bn_param_defaults",
          "B4", "bn_param.get('momentum', 0.99), as in Keras.", ("pass --momentum 0.99 ", "the default momentum is not 0.9"),
          ("--convention keras", "bug class B4"), (_BNPARAM, "pass --momentum 0.99 (momentum as the decay of the old value)")),
    _pair("audit-course-var-eps-defaults", _C + "bug_running_var_eps", _NP, "modes", "test_bn_param_defaults", "B1",
          "My sample_var includes eps.", (NEUTRAL, "the default momentum is not 0.9"), ("pass --momentum",),
          (_BNPARAM, None)),
)
"""Each changed cause sentence, reproduced on one bug and rightly absent on a look-alike."""
