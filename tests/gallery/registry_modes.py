"""The modes gallery: buggy batch norms the ``modes`` suite must fail, and correct ones of each convention.

``catches`` names the ``suites/test_bn_modes.py`` checks that must each have at least one failed
parametrization on the bug.  ``CORRECT_CONVENTIONS`` lists ``(target, kind, convention)`` triples
that must pass ``--suite modes --convention X`` (and forward/backward) on any seed.
"""

from __future__ import annotations

from tests.gallery.registry import Bug

__all__ = ["MODES_BUGS", "CORRECT_CONVENTIONS"]

_B = "tests.gallery.buggy_modes:"
_MODES = ("modes",)

MODES_BUGS: tuple[Bug, ...] = (
    Bug("modes-biased-running-var", _B + "BiasedRunningVarBatchNorm", None, _MODES,
        ("test_running_stats", "test_momentum_none"), "B1",
        "I fold the batch variance I normalise with into running_var; I did not know torch stores m/(m-1) of it."),
    Bug("modes-inverted-momentum", _B + "InvertedMomentumBatchNorm", None, _MODES,
        ("test_running_stats", "test_mode_toggling"), "B4",
        "I ported the TF layer: moving = momentum * moving + (1 - momentum) * batch, but kept torch's momentum=0.1."),
    Bug("modes-no-running-update", _B + "NoRunningUpdateBatchNorm", None, _MODES,
        ("test_running_stats", "test_momentum_none"), "B8",
        "I update a clone of running_mean inside no_grad and never assign it back."),
    Bug("modes-hardcoded-momentum", _B + "HardcodedMomentumBatchNorm", None, _MODES,
        ("test_running_stats",), "B4",
        "My kernel takes MOMENTUM as a constant 0.1; the module's momentum argument is never passed down."),
    Bug("modes-momentum-none-as-default", _B + "MomentumNoneAsDefaultBatchNorm", None, _MODES,
        ("test_momentum_none", "test_running_stats"), "B26",
        "I wrote `w = self.momentum or 0.1`, so momentum=None (and 0) become 0.1."),
    Bug("modes-counter-not-incremented", _B + "CounterNotIncrementedBatchNorm", None, _MODES,
        ("test_num_batches_tracked", "test_momentum_none"), "B26",
        "The num_batches_tracked.add_(1) got lost in a refactor; momentum=None divides by max(count, 1)."),
    Bug("modes-eval-updates-stats", _B + "EvalUpdatesStatsBatchNorm", None, _MODES,
        ("test_eval_uses_running_stats", "test_mode_toggling"), "B10",
        "My update is not guarded by self.training, so every eval batch moves the running statistics."),
    Bug("modes-no-track-keeps-buffers", _B + "NoTrackKeepsBuffersBatchNorm", None, _MODES,
        ("test_no_tracking",), "B9",
        "I always register the buffers; with track_running_stats=False eval still normalises with them."),
    Bug("modes-single-value-nan", _B + "SingleValueNaNBatchNorm", None, _MODES,
        ("test_single_value_per_channel",), "B13",
        "No check for one value per channel: m/(m-1) = 1/0 puts NaN into running_var."),
    Bug("modes-update-before-check", _B + "UpdateBeforeCheckBatchNorm", None, _MODES,
        ("test_single_value_per_channel",), "B12",
        "I validate the batch size after updating the buffers, so a caught ValueError leaves NaN statistics."),
    Bug("modes-keras-eps-default", _B + "KerasEpsDefaultBatchNorm", None, _MODES,
        ("test_constructor_defaults",), "B5",
        "I copied Keras's epsilon=1e-3 default into a module that replaces torch.nn.BatchNorm2d."),
    Bug("modes-stats-not-buffers", _B + "StatsNotBuffersBatchNorm", None, _MODES,
        ("test_state_dict_roundtrip",), "B8",
        "I keep running_mean/var as plain attributes; state_dict() does not save them."),
    Bug("modes-cached-fold", _B + "CachedFoldBatchNorm", None, _MODES,
        ("test_mode_toggling",), "seed-000",
        "I cache the folded scale/shift on the first eval call and never invalidate it after more training."),
    Bug("modes-affine-false-params", _B + "AffineFalseParamsBatchNorm", None, _MODES,
        ("test_affine_false",), "affine",
        "affine=False still creates weight and bias parameters; forward just ignores them."),
    Bug("modes-eval-hardcoded-eps", _B + "EvalHardcodedEpsBatchNorm", None, _MODES,
        ("test_eps_honoured", "test_fold"), "B5",
        "My fused inference kernel uses eps=1e-5 whatever the constructor was given."),
    Bug("modes-zeros-running-var", _B + "ZerosRunningVarBatchNorm", None, _MODES,
        ("test_fresh_defaults",), "B8",
        "I copied the running_mean line for running_var, so it starts at zeros instead of ones."),
    Bug("modes-eval-batch-stats-unless-single", _B + "EvalBatchStatsUnlessSingleBatchNorm", None, _MODES,
        ("test_eval_per_sample",), "B7",
        "In eval I use the batch's own statistics when there is a batch, and the running ones for a single example."),
    Bug("modes-cs231n-update-fraction", _B + "Cs231nUpdateFractionMomentum", "numpy-cs231n", _MODES,
        ("test_running_stats",), "B4",
        "In my cs231n solution I blend (1 - momentum) * running + momentum * sample, torch's way."),
)

_C = "tests.gallery.correct_conventions:"

CORRECT_CONVENTIONS: tuple[tuple[str, str | None, str], ...] = (
    ("torch", None, "torch"),
    ("reference", None, "torch"),
    (_C + "KerasBatchNorm", None, "keras"),
    (_C + "FlaxBatchNorm", None, "flax"),
    (_C + "Cs231nBatchNorm", "numpy-cs231n", "cs231n"),
)
