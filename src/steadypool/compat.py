"""Drop-in replacements for code that steadypool grew out of.

`BatchThreader` keeps the seed's constructor and `pop_results()`, so a program changes
one import and keeps its code, but runs on a pool shared by every instance instead of a
new 15-thread pool per call (which the seed never joined).  Uses only the public API.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
from collections import deque
from typing import TYPE_CHECKING, Any

from . import Pool

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from concurrent.futures import Future

__all__ = ["BatchThreader", "shutdown_shared_pools"]

# Invariant: `_pools` maps (worker count, nesting depth) to the one live shared Pool of
# that size for BatchThreaders made at that depth; `_pools_lock` guards it.  Pools live
# until `shutdown_shared_pools()` or exit.
#
# Depth: a BatchThreader made inside a task of another one (depth 0 -> 1 ...) gets a pool
# of its own level.  On the outer pool its tasks would queue behind the very tasks that
# wait for them, and with every worker waiting nothing would run (the seed's class made
# a pool per instance, so nesting worked there).  `_local.depth` is set only while a
# BatchThreader task runs, in the thread that runs it.
_pools: dict[tuple[int, int], Pool] = {}
_pools_lock = threading.Lock()
_local = threading.local()


def _shared_pool(workers: int, depth: int) -> Pool:
    with _pools_lock:
        pool = _pools.get((workers, depth))
        if pool is None:
            name = f"compat{workers}" + (f".{depth}" if depth else "")
            pool = _pools[workers, depth] = Pool(workers, name=name)
        return pool


def _at_depth(depth: int, func: Callable[..., Any], *args: Any) -> Any:
    """Run ``func(*args)`` as a BatchThreader task of nesting level `depth`."""
    outer = getattr(_local, "depth", 0)
    _local.depth = depth + 1
    try:
        return func(*args)
    finally:
        _local.depth = outer


def shutdown_shared_pools(wait: bool = True) -> None:
    """Shut down the pools shared by `BatchThreader` instances (run at exit too).

    A `BatchThreader` made afterwards starts a fresh shared pool.
    """
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        pool.shutdown(wait=wait, cancel_futures=True)


atexit.register(shutdown_shared_pools, wait=False)


class BatchThreader:
    """The seed's ``BatchThreader``, on a shared pool: same constructor, same results.

    Calls ``func(*args)`` for each element of `args_list` and hands results back in
    order, `batch_size` at a time, keeping ``(prefetch_size + 1) * batch_size`` tasks
    in flight.

    Args:
        func: Called as ``func(*args)`` for each element of `args_list`.
        args_list: The argument tuples; copied, never modified.
        batch_size: Results returned per `pop_results` call (at most).
        prefetch_size: Batches kept in flight beyond the one being popped.
        processes: Worker threads of the shared pool this instance runs on; instances
            with the same count share one pool.  An instance made inside another's
            task (nested use) runs on a shared pool of its nesting level, so it never
            waits on workers that wait for it.

    Raises:
        TypeError, ValueError: Bad arguments, before any task starts.
    """

    def __init__(
        self,
        func: Callable[..., Any],
        args_list: Iterable[Any],
        batch_size: int,
        prefetch_size: int = 4,
        processes: int = 12,
    ) -> None:
        if not callable(func):
            raise TypeError(f"func must be callable, got {func!r}")
        for name, value, low in (
            ("batch_size", batch_size, 1),
            ("prefetch_size", prefetch_size, 0),
            ("processes", processes, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        self.batch_size = batch_size
        self.prefetch_size = prefetch_size
        self.func = func
        self._args = list(args_list)  # a copy: the caller's list is never touched
        self.n_tasks = len(self._args)
        self._next = 0  # index in _args of the next task to start
        self._depth = getattr(_local, "depth", 0)
        self._pool = _shared_pool(processes, self._depth)
        # Started, not yet popped, in order: (input position, future).
        self._in_flight: deque[tuple[int, Future[Any]]] = deque()
        self._start_works()

    def _start_works(self) -> None:
        goal = (self.prefetch_size + 1) * self.batch_size
        while len(self._in_flight) < goal and self._next < self.n_tasks:
            args = self._args[self._next]
            future = self._pool.submit(_at_depth, self._depth, self.func, *args)
            self._in_flight.append((self._next, future))
            self._next += 1

    def pop_results(self) -> list[Any]:
        """Return the next (up to) `batch_size` results, in order; ``[]`` when done.

        Raises:
            Exception: A task's own exception, with a note naming its position in
                `args_list`.  Only that task is dropped: the results before it in the
                batch are returned by the next call, with those after it, and the
                instance stays usable.

        **Blocks** until the batch's tasks have finished.
        """
        count = min(self.batch_size, len(self._in_flight))
        try:
            results = []
            for index in range(count):
                position, future = self._in_flight[index]
                try:
                    # Wake-up path: the task finishes (the shared pool runs until exit).
                    # In slices, so Ctrl-C taken by another thread is still seen here.
                    while not future.done():
                        with contextlib.suppress(TimeoutError):
                            future.exception(0.25)
                    results.append(future.result())
                except BaseException as exc:
                    del self._in_flight[index]
                    with contextlib.suppress(Exception):  # a frozen exception refuses notes
                        exc.add_note(f"steadypool.compat: BatchThreader args_list[{position}]")
                    raise
            for _ in range(count):
                self._in_flight.popleft()
        finally:
            self._start_works()
        return results
