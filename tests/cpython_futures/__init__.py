"""CPython 3.13.0's own `Lib/test/test_concurrent_futures` (PSF licence, LICENSE.txt),
run against `steadypool.Pool` by `tests/test_cpython_futures.py`; see README.md here.

The suite was written for CPython 3.13's `test.support`; on older CPythons two names it
imports are missing, and are given their 3.13 meaning on a GIL build here.
"""

from __future__ import annotations

from test import support

if not hasattr(support, "Py_GIL_DISABLED"):
    support.Py_GIL_DISABLED = False
if not hasattr(support, "requires_gil_enabled"):

    def requires_gil_enabled(msg: str = "needs the GIL enabled") -> object:
        return lambda test: test  # a GIL build: nothing to skip

    support.requires_gil_enabled = requires_gil_enabled
