"""bnverify: verify and benchmark batch-norm implementations against float64 references."""

__version__ = "0.1.0"
