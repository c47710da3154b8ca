"""The body of a Ray worker actor (Ray backend); runs in the actor's process only.

Data flow, one actor::

    driver --run_batch(fn, [(task id, argument frames), ...])--> the actor's main thread
    main thread: run each item (`_wire.call`) --(task id, tag, frames, seconds)--> `done`
    driver --drain() (control thread)--> the outcomes in `done` so far, and what runs now
    run_batch returns --> the outcomes `drain` did not take

Arguments and outcomes travel as frames pickled by steadypool (`_remote.dumps`), so Ray
only ever carries bytes: an argument or result that cannot be pickled is that item's own
error, reported by the side that pickles it, never a failed call that takes its batch
(or a drain's answer) with it (issue 17, holes 1, 2 and 9).

`lock` guards `done`: the batch's thread appends, `drain` takes.  `current` and
`withdrawn` are written by one thread each and read whole (a tuple, a set replaced by
the control thread only through `update`, which the GIL makes atomic).
"""

from __future__ import annotations

import os
import pickle
import sys
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any

import cloudpickle

from .._devices import activate
from .._oom import resident
from .._worker import Worker, bind
from . import _wire as wire

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Actor", "Outcomes", "for_ray"]

# (task id, OK | ERR | SKIPPED, frames, seconds it ran)
Outcomes = list[tuple[int, str, list[Any], float]]


def for_ray(frames: list[bytes | memoryview]) -> list[Any]:
    """Frames as Ray carries them: a big buffer stays out of band (a PickleBuffer, which
    Ray's pickler sends from its own memory), the rest as bytes."""
    return [f if isinstance(f, bytes) else pickle.PickleBuffer(f) for f in frames]


class Actor:
    """The body of one worker actor (wrapped with ray.remote by the driver)."""

    def __init__(self, worker: Worker, setup: bytes | None, max_memory: int | None) -> None:
        self.worker = worker
        self.setup_bytes = setup
        self.max_memory = max_memory  # stop a batch once resident memory is past it
        self.ident = 0
        # The item running now: (task id, time.monotonic() here when it started).
        self.current: tuple[int, float] | None = None
        self.withdrawn: set[int] = set()  # task ids of the running batch not to start
        self.done: Outcomes = []
        self.lock = threading.Lock()

    def begin(self) -> tuple[int, str]:
        """Answer as soon as the actor runs: (pid, node id); setup follows."""
        import ray

        return os.getpid(), ray.get_runtime_context().get_node_id()

    def setup(self) -> tuple[bool, list[Any] | None, int, str]:
        """Run ``setup(worker)``: (ok, error frames or None, pid, node id)."""
        import ray

        node = ray.get_runtime_context().get_node_id()
        self.ident = threading.get_ident()  # stack() shows the setup while it runs
        try:
            bind(self.worker)
            activate(self.worker.device)
            if self.setup_bytes is not None:
                self.worker = self.worker.with_state(
                    cloudpickle.loads(self.setup_bytes)(self.worker)
                )
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            return False, for_ray(wire.error_frames(exc)), os.getpid(), node
        return True, None, os.getpid(), node

    def run_batch(
        self, fn: Callable[..., Any], items: list[tuple[int, list[Any]]]
    ) -> tuple[Outcomes, list[int], int | None]:
        """Run each item in order; return the outcomes `drain` has not taken, the task
        ids not started because the actor's resident memory passed ``max_worker_memory``
        (checked after each item), and its resident memory now (None without procfs)."""
        bind(self.worker)
        self.ident = threading.get_ident()
        unrun: list[int] = []
        for at, (task_id, frames) in enumerate(items):
            if at and self.max_memory is not None and (resident() or 0) > self.max_memory:
                unrun = [task_id for task_id, _ in items[at:]]
                break
            if task_id in self.withdrawn:
                with self.lock:
                    self.done.append((task_id, wire.SKIPPED, [], 0.0))
                continue
            started = time.monotonic()
            self.current = (task_id, started)
            tag, out = wire.call(fn, frames)
            self.current = None
            with self.lock:
                self.done.append((task_id, tag, for_ray(out), time.monotonic() - started))
            del out
        self.withdrawn.difference_update(task_id for task_id, _ in items)
        with self.lock:
            taken, self.done = self.done, []
        return taken, unrun, resident()

    def drain(self) -> tuple[Outcomes, tuple[int, float] | None]:
        """(the outcomes finished since the last look, (task id, seconds it has run) of
        the item running now or None); a control call, beside the running batch."""
        with self.lock:
            taken, self.done = self.done, []
        current = self.current
        return taken, None if current is None else (current[0], time.monotonic() - current[1])

    def withdraw(self, task_ids: list[int]) -> None:
        """Do not start these items of the running batch (a control call)."""
        self.withdrawn.update(task_ids)

    def stack(self) -> str:
        frame = sys._current_frames().get(self.ident)
        if frame is None:
            return ""
        return "".join(traceback.format_stack(frame))
