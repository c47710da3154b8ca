"""The vendored CPython modules are run through tests/test_cpython_futures.py only: their
own module-level classes test the stdlib executors, not steadypool."""

collect_ignore_glob = ["test_*.py"]
