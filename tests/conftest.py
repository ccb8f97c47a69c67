import sys

pytest_plugins = ["chatcore.testing"]

# Locust needs Python 3.11+. On 3.10 the smoke test is not collected at all
# (rather than skipped); everywhere else a missing Locust fails it.
collect_ignore = ["test_loadtest_smoke.py"] if sys.version_info < (3, 11) else []
