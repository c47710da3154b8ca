"""`steadypool.Pool` under the constructor the CPython suite calls executors with.

Importable from the programs the suite starts (they put the `tests` folder on
``sys.path`` and import ``cpython_futures.adapter``), so each backend has a class of
its own, named like an executor.
"""

from __future__ import annotations

from typing import Any

import steadypool


def _adapted(backend: str) -> type[steadypool.Pool]:
    class Adapted(steadypool.Pool):
        """``Executor(max_workers, mp_context=..., thread_name_prefix=...)`` as a Pool."""

        def __init__(
            self,
            max_workers: int | None = None,
            mp_context: Any = None,
            thread_name_prefix: str = "",
            **unsupported: Any,
        ) -> None:
            if unsupported:  # initializer, max_tasks_per_child: not part of this run
                raise TypeError(f"not mapped onto steadypool.Pool: {sorted(unsupported)}")
            super().__init__(max_workers, backend=backend, name=thread_name_prefix or None)

    name = f"Steadypool{backend.capitalize()}"
    Adapted.__name__ = Adapted.__qualname__ = name
    return Adapted


SteadypoolThreads = _adapted("threads")
SteadypoolProcesses = _adapted("processes")
SteadypoolRay = _adapted("ray")
