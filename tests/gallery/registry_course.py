"""Course-shaped and public-code bugs: ``tests/gallery/course/`` (cs231n ``layers.py`` as handed in) and
``tests/gallery/public_torch.py`` (PyTorch re-implementations as tutorials write them).

Same ``Bug`` record as ``tests.gallery.registry``: ``catches`` names the suite checks that must all fail.
"""

from __future__ import annotations

from tests.gallery.registry import Bug

__all__ = ["COURSE_BUGS", "PUBLIC_BUGS"]

_C = "tests.gallery.course."

COURSE_BUGS: tuple[Bug, ...] = (
    Bug("course-spatial-raises", _C + "bug_spatial_raises", None, ("forward",), ("test_forward_train",), "B18",
        "I called batchnorm_forward on x.reshape(N, -1) in spatial_batchnorm_forward; gamma no longer broadcasts."),
    Bug("course-spatial-channel-mix", _C + "bug_spatial_channel_mix", None, ("forward",), ("test_forward_train",),
        "B18", "I transposed (0, 1, 3, 2) instead of (0, 2, 3, 1) before reshape(-1, C)."),
    Bug("course-test-no-eps", _C + "bug_test_no_eps", None, ("forward", "modes"),
        ("test_forward_eval", "test_eps_honoured"), "B15",
        "My test branch divides by np.sqrt(running_var): I forgot eps there."),
    Bug("course-test-no-affine", _C + "bug_test_no_affine", None, ("forward",), ("test_forward_eval",), "affine",
        "My test branch returns (x - running_mean) / np.sqrt(running_var + eps) without gamma and beta."),
    Bug("course-running-var-eps", _C + "bug_running_var_eps", None, ("modes",), ("test_running_stats",), "B1",
        "I add eps to the sample variance once and use it for both the normalisation and the running average."),
    Bug("course-fixed-eps", _C + "bug_fixed_eps", None, ("forward",), ("test_forward_train",), "B5",
        "I wrote np.sqrt(sample_var + 1e-6) instead of reading bn_param['eps']."),
    Bug("course-default-momentum", _C + "bug_default_momentum", None, ("modes",), ("test_bn_param_defaults",), "B4",
        "I changed the template's default to bn_param.get('momentum', 0.1), as in PyTorch."),
    Bug("course-gamma-2d", _C + "bug_gamma_2d", None, ("backward",), ("test_backward_train",), "shape",
        "My dgamma and dbeta keep the summed axis (keepdims=True): shape (1, D) for parameters of shape (D,)."),
)

_P = "tests.gallery.public_torch:"
_M = "tests.gallery.buggy_modules:"

PUBLIC_BUGS: tuple[Bug, ...] = (
    Bug("public-graph-in-buffers", _P + "GraphInBuffersBatchNorm", None, ("modes",), ("test_running_buffers_detached",),
        "B8", "I assign self.running_mean = (1 - m) * self.running_mean + m * mean; I never detach the batch mean."),
    Bug("public-large-batch-inplace", _P + "LargeBatchInPlaceBatchNorm", None, ("forward",), ("test_forward_contract",),
        "contract-inplace", "For batches of 128 or more I write the output into the input tensor to save memory."),
    Bug("module-mode-ignores-eval", _M + "EvalBatchStatsBatchNorm", None, ("modes",), ("test_mode_source",), "B7",
        "I update the running statistics in training but always normalise with the batch statistics, also in eval."),
)
