"""The check modules run against a target: ``pytest --pyargs bnverify.suites --bn-target=...``."""
