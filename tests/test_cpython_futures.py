"""CPython's own `test_concurrent_futures` (3.13.0), run with `steadypool.Pool` as the
executor on every backend: the generic Executor contract (submit, map, shutdown,
interpreter exit, wait, as_completed) and the Future tests.

The executor-specific classes of that suite (``ThreadPoolShutdownTest`` and the like)
test `ThreadPoolExecutor` and `ProcessPoolExecutor` by name or through their private
attributes (``_threads``, ``_processes``), so they are not run.  Where a test encodes
a behaviour steadypool deliberately does differently, `DIFFERENCES` says why (and the
README's contracts say so).
"""

from __future__ import annotations

import logging
import unittest
from typing import Any

import pytest

from .conftest import BACKENDS
from .cpython_futures import test_future, util
from .cpython_futures.adapter import SteadypoolProcesses, SteadypoolRay, SteadypoolThreads
from .cpython_futures.executor import ExecutorTest
from .cpython_futures.test_as_completed import AsCompletedTests
from .cpython_futures.test_shutdown import ExecutorShutdownTest
from .cpython_futures.test_wait import WaitTests

# test name -> why steadypool differs on purpose
DIFFERENCES = {
    "test_max_workers_negative": (
        "steadypool raises ValueError for workers < 1 too, but its message names its own "
        "parameter ('workers must be an int >= 1 ...'), not 'max_workers must be greater "
        "than 0'"
    ),
}

# backend -> {test name: why}: differences of one backend only
BACKEND_DIFFERENCES = {
    "ray": dict.fromkeys(
        ("test_interpreter_shutdown", "test_hang_gh83386"),
        "the task prints 'apple' in a Ray actor, whose output goes to Ray's logs "
        "(or, with log_to_driver, to the driver with an actor prefix), never as the "
        "plain line the test reads; tests/test_exit.py checks the same promise on Ray "
        "through a file the task writes",
    ),
}

EXECUTORS = {
    "threads": SteadypoolThreads,
    "processes": SteadypoolProcesses,
    "ray": SteadypoolRay,
}
CONTRACTS = (ExecutorTest, ExecutorShutdownTest, WaitTests, AsCompletedTests)


def _case(backend: str, contract: type) -> type[unittest.TestCase]:
    mixin = type(f"{backend}Mixin", (util.ExecutorMixin,), {"executor_type": EXECUTORS[backend]})
    attrs: dict[str, Any] = {"__module__": __name__}
    for test, why in {**DIFFERENCES, **BACKEND_DIFFERENCES.get(backend, {})}.items():
        if hasattr(contract, test):
            attrs[test] = unittest.skip(f"deliberate difference: {why}")(getattr(contract, test))
    case: type[unittest.TestCase] = type(
        f"{contract.__name__}_{backend}", (contract, mixin, util.BaseTestCase), attrs
    )
    if backend == "ray":
        case = pytest.mark.ray(pytest.mark.usefixtures("ray_instance")(case))
    return case


for _backend in BACKENDS:
    for _contract in CONTRACTS:
        _cls = _case(_backend, _contract)
        globals()[_cls.__name__] = _cls
del _backend, _contract, _cls  # else pytest collects the last class twice


class FutureContract(test_future.FutureTests):  # type: ignore[misc]
    """The Future every submit() returns is concurrent.futures.Future: its own tests.

    Two of them read what the "concurrent.futures" logger printed to stderr; pytest's log
    capture keeps records from Python's last-resort handler, so it is attached here, and
    the logger is enabled again (Ray's logging set-up disables existing loggers).
    """

    def setUp(self) -> None:
        super().setUp()
        assert logging.lastResort is not None
        logger = logging.getLogger("concurrent.futures")
        self._was_disabled = logger.disabled
        logger.disabled = False
        logger.addHandler(logging.lastResort)

    def tearDown(self) -> None:
        assert logging.lastResort is not None
        logger = logging.getLogger("concurrent.futures")
        logger.removeHandler(logging.lastResort)
        logger.disabled = self._was_disabled
        super().tearDown()
