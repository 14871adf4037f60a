"""Reference implementations (installed as ``bnverify.reference``).

``batchnorm`` is the numpy float64 oracle; ``batchnorm_torch`` is its torch
twin for any device and dtype.  Nothing here imports the harness.
"""
