"""Meta-tests of bnverify itself (not of any target)."""

pytest_plugins = ["pytester"]
