"""A gallery of batch-norm implementations to point bnverify at.

``correct`` holds implementations that agree with the float64 oracle
(``reference/batchnorm.py``) to rounding, one per target kind; the
``buggy_*`` modules hold realistic wrong ones, each otherwise correct, with a
docstring naming the mistake, its bug class (ANCHORS part A section 6) and
what the correct version does.  ``registry`` lists them with the suite checks
that must fail on each; ``test_gallery_sanity`` proves against the oracle
that the correct ones are correct and that every bug really deviates.
"""
