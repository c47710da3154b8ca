"""`Pool`: the public executor, driving a backend through the core.

The pool validates input, builds tasks and hands them to its backend; ordering, the
window and the error policy live in `_stream` and `_window`.  Futures (`submit`, `map`)
are owned by `_FutureOwner`, streams (`imap`, `imap_batches`) by `StreamOwner`.
"""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Sized
from concurrent.futures import Executor, Future
from functools import partial
from itertools import islice
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from . import _exit
from ._backends import get_backend
from ._backends._base import BackendOptions
from ._checks import (
    check_callable,
    check_int,
    check_options,
    check_seconds,
    check_size,
    default_workers,
    forks,
    refuse_at_exit,
)
from ._devices import check_available, parse_devices
from ._exceptions import add_task_note
from ._exit import DEFAULT_STALL_TIMEOUT
from ._map import MapStream, map_outcomes, map_results, run_chunk
from ._resume import DEFAULT_CHECKPOINT_EVERY, load_state, parse_state, skip_consumed
from ._stats import PoolStats
from ._stream import Stream, StreamOwner
from ._watchdog import Monitor, Watchdog
from ._worker import Worker

if TYPE_CHECKING:
    from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
    from os import PathLike
    from types import TracebackType
    from typing import ParamSpec, Self

    from ._backends._base import Backend
    from ._records import Outcome, StallReport

    P = ParamSpec("P")

__all__ = ["Pool"]

T = TypeVar("T")
A = TypeVar("A")

_ON_ERROR = ("raise", "return")
_ON_STALL = ("report", "raise", "restart")


def _show_stall(bars: weakref.WeakSet[Any], report: StallReport | None) -> None:
    """Show a stall on every open progress bar of the pool (None: the stall is over)."""
    text = "" if report is None else f"STALLED {report.since_progress:.0f}s"
    for bar in list(bars):
        bar.set_postfix_str(text)


class _FutureOwner:
    """Owner of tasks whose key is ``(future, input position or None)``; stateless."""

    __slots__ = ()

    def begin(self, key: tuple[Future[Any], int | None]) -> bool:
        return key[0].set_running_or_notify_cancel()

    def put(self, outcome: Outcome) -> None:
        (future, position), ok, value, worker = outcome
        if ok:
            future.set_result(value)
        else:
            add_task_note(value, position, worker)
            future.set_exception(value)

    def drop(self, key: tuple[Future[Any], int | None]) -> None:
        future = key[0]
        if future.cancel():
            future.set_running_or_notify_cancel()  # wakes wait()/as_completed() waiters

    def position(self, key: tuple[Future[Any], int | None]) -> int | None:
        return key[1]

    def wanted(self, key: tuple[Future[Any], int | None]) -> bool:
        return True  # submitted work completes, at exit too (as with concurrent.futures)


_FUTURES = _FutureOwner()


class Pool(Executor):
    """A pool of workers that runs tasks in order, in a bounded window, never silently stuck.

    Args:
        workers: How many workers to start.  Default: one per entry of `devices`, or
            ``min(32, cpu_count + 4)`` threads.
        devices: Pin one worker to each entry (``["cuda:0", "cuda:1"]``); an entry may
            repeat to put several workers on one device.  Tasks and `setup` see it as
            ``current_worker().device``, and run with it current: on threads a CUDA
            worker sets its device and a CUDA stream of its own once, when it starts;
            on processes each worker process sees only its device (as ``cuda:0``).
            A device this machine lacks is refused before any worker starts.
        setup: Called once in each worker, before its first task, as ``setup(worker)``;
            what it returns is ``worker.state`` (a model replica, a connection).  If it
            raises, the pool is broken: everything queued and submitted after fails
            with `BrokenPool`, whose cause is the setup's exception.
        backend: ``"threads"`` (the default), ``"processes"`` (worker processes that
            can be killed and replaced; functions and arguments are sent with
            cloudpickle, so closures work) or ``"ray"`` (Ray actors, one per worker; a
            ``cuda`` device asks Ray for a GPU).
        retries: Process backend: run an item again on a fresh worker, up to this many
            times, when its worker crashed or was killed (task_timeout,
            ``on_stall="restart"``); then it fails.
        start_method: Process backend: ``"spawn"`` (default; safe with CUDA) or
            ``"forkserver"``.
        address: Ray backend: the cluster to connect to (``"ray://head:10001"``,
            ``"auto"``); default: the instance this process is connected to, else
            ``RAY_ADDRESS``, else a local instance sized to the machine, which the last
            pool using it shuts down.
        max_tasks_per_worker: Processes and Ray: a worker runs at most this many
            items.  A fresh worker (running `setup` again) is started while the old one
            runs its last items (once they would take about as long as a start-up), and
            takes its place when ready.  None: never.
        max_worker_memory: Processes and Ray: recycle a worker whose resident memory,
            measured after each item (each batch of short items), is above this many
            bytes (an int, or a size such as ``"4GiB"``, ``"512MB"``).  It is a
            trigger, not a cap: the worker goes on taking items until its successor
            is ready, so capacity does not dip.  No item is lost, failed or run twice
            by recycling; ``stats().recycled`` counts recycled workers.  Threads refuse
            both (a thread cannot give its memory back).
        task_timeout: Seconds an item may run, counted from when a worker starts it;
            past it the item fails with `TaskTimeout` (handled by `on_error` like any
            task error) and its worker is replaced.  On threads the stuck thread is
            abandoned (it cannot be killed) and a fresh one, running `setup` again,
            takes its place.  None: no limit.
        stall_timeout: Seconds without any item finishing, while items run, that make
            a stall; the watchdog then builds a `StallReport` (each busy worker, its
            item, for how long, its Python stack, and a likely cause where the stacks
            show one) and does what `on_stall` says.  Default: 300 (a hang is never
            silent; with the default policy a stall is only logged).  None: no stall
            detection (and no watchdog thread).
        on_stall: ``"report"`` (default): log the report at WARNING on the
            ``steadypool`` logger and keep waiting, repeating after 2x, 4x, ...
            ``stall_timeout``.  ``"raise"``: the consumer gets `StallError` carrying the
            report (the stuck workers are replaced, as for a timeout).  ``"restart"``:
            on backends that can kill workers, kill and replace the stuck ones; on
            threads it acts as ``"raise"`` and says why.  A callable: called with the
            report once per stall.
        progress: Show a tqdm progress bar over each `imap` and `imap_batches`; it
            shows ``STALLED <s>`` while the pool is stalled.
        name: A label for the pool's threads (``steadypool-<name>-w<index>``).

    Raises:
        TypeError, ValueError: Bad arguments, before any worker starts.

    **Shutdown:** `shutdown`, or leaving a ``with`` block, stops the workers once what is
    queued has run; leaving the block by KeyboardInterrupt or SystemExit cancels what is
    queued and does not wait for running tasks.  A pool that is garbage collected is
    shut down without waiting.  **At interpreter exit** work already submitted
    (`submit`, `map`) completes, as with the concurrent.futures executors, while open
    streams are cancelled; the wait is watched (stall reports; it gives up with an
    ERROR after ``2 x stall_timeout`` without progress) and Ctrl-C ends it at once.
    """

    def __init__(
        self,
        workers: int | None = None,
        *,
        devices: Sequence[str] | None = None,
        setup: Callable[[Worker], Any] | None = None,
        backend: str = "threads",
        retries: int = 0,
        start_method: str | None = None,
        address: str | None = None,
        max_tasks_per_worker: int | None = None,
        max_worker_memory: int | str | None = None,
        task_timeout: float | None = None,
        stall_timeout: float | None = DEFAULT_STALL_TIMEOUT,
        on_stall: str | Callable[[StallReport], Any] = "report",
        progress: bool = False,
        name: str | None = None,
    ) -> None:
        backend_class = get_backend(backend)
        check_options(
            backend,
            backend_class.options,
            retries=retries,
            start_method=start_method,
            address=address,
            max_tasks_per_worker=max_tasks_per_worker,
            max_worker_memory=max_worker_memory,
        )
        check_int("retries", retries, 0, "extra runs of an item whose worker died")
        if max_tasks_per_worker is not None:
            check_int("max_tasks_per_worker", max_tasks_per_worker, 1, "items a worker runs")
        max_memory = check_size("max_worker_memory", max_worker_memory)
        if start_method is not None and start_method not in ("spawn", "forkserver"):
            raise ValueError(f"start_method must be 'spawn' or 'forkserver', got {start_method!r}")
        task_timeout = check_seconds("task_timeout", task_timeout)
        stall_timeout = check_seconds("stall_timeout", stall_timeout)
        if not callable(on_stall) and on_stall not in _ON_STALL:
            raise ValueError(
                f"on_stall must be 'report', 'raise', 'restart' or a callable(report), "
                f"got {on_stall!r}"
            )
        parsed: tuple[str | None, ...]
        if devices is not None:
            parsed = parse_devices(devices)
            if workers is not None and workers != len(parsed):
                raise ValueError(
                    f"workers={workers} does not match the {len(parsed)} devices given; "
                    "with devices= one worker is started per entry, so leave workers out "
                    "or repeat a device to put more workers on it"
                )
        else:
            count = default_workers() if workers is None else workers
            count = check_int("workers", count, 1, "how many workers to start")
            parsed = (None,) * count
        if setup is not None:
            check_callable("setup", setup)
        check_available(parsed)
        self._born = (forks(), os.getpid())
        self._progress = bool(progress)
        self._workers = tuple(Worker(i, device) for i, device in enumerate(parsed))
        self._backend: Backend = backend_class(
            self._workers,
            setup,
            BackendOptions(
                name=name or "",
                retries=retries,
                start_method=start_method,
                address=address,
                max_tasks=max_tasks_per_worker,
                max_memory=max_memory,
            ),
        )
        self._bars: weakref.WeakSet[Any] = weakref.WeakSet()  # open progress bars
        self._monitor: Monitor | None = None
        self._watchdog = Watchdog(task_timeout, stall_timeout)
        if task_timeout is not None or stall_timeout is not None:
            self._monitor = Monitor(
                self._backend,
                self._watchdog,
                on_stall,
                name=self._backend.name,
                clock=time.monotonic,
                on_report=partial(_show_stall, self._bars),
            )
        self._finalizer = weakref.finalize(
            self, _close, self._backend, self._monitor, wait=False, cancel=False
        )
        _exit.register(self._backend, self._monitor, self._backend.name, stall_timeout)

    def _check_usable(self) -> None:
        """Refuse new work at interpreter exit, and in a process forked from the one
        that made the pool."""
        refuse_at_exit()
        if self._born[0] != forks():
            raise RuntimeError(
                f"this steadypool Pool was created in process {self._born[1]} and cannot be "
                f"used in process {os.getpid()}, forked from it: its workers and threads "
                "stayed in the parent (a fork copies only the thread that forked), so work "
                "submitted here would never run. Create the pool in the child process, or "
                "start the child with 'spawn' (a torch DataLoader: "
                "multiprocessing_context='spawn')"
            )

    @property
    def workers(self) -> int:
        """How many workers the pool runs."""
        return len(self._workers)

    @property
    def stall_timeout(self) -> float | None:
        """Seconds without progress that make a stall (None: stall detection is off)."""
        return self._watchdog.stall_timeout

    @property
    def task_timeout(self) -> float | None:
        """Seconds an item may run (None: no limit)."""
        return self._watchdog.task_timeout

    @property
    def devices(self) -> tuple[str | None, ...]:
        """The device of each worker, by index (None for workers without a device)."""
        return tuple(w.device for w in self._workers)

    def stats(self) -> PoolStats:
        """Return a snapshot of the pool's work so far (cheap; safe from any thread)."""
        workers, abandoned, replaced = self._backend.worker_stats()
        done, queued = self._backend.counts()
        return PoolStats(
            done=done,
            failed=self._backend.failed,
            in_flight=len(self._backend.busy()),
            queued=queued,
            timed_out=0 if self._monitor is None else self._monitor.timed_out,
            stalls=self._watchdog.stalls,
            replaced=replaced,
            abandoned_running=abandoned,
            workers=workers,
            recycled=sum(w.recycled for w in workers),
        )

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)`` and return a `concurrent.futures.Future`.

        Raises:
            TypeError: `fn` is not callable.
            RuntimeError: The pool has been shut down.
            BrokenPool: A worker's setup failed.

        **Errors:** the future's exception is the task's own, with a note naming the
        worker.
        """
        check_callable("fn", fn)
        self._backend.prepare(fn)
        return self._submit_at(None, fn, args, kwargs or None)

    def _submit_at(
        self,
        position: int | None,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None = None,
    ) -> Future[T]:
        self._check_usable()
        future: Future[T] = Future()
        self._backend.submit(((future, position), fn, args, kwargs, _FUTURES, time.monotonic()))
        return future

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        resume: dict[str, Any] | None = None,
        checkpoint: str | PathLike[str] | None = None,
        checkpoint_every: float = DEFAULT_CHECKPOINT_EVERY,
    ) -> MapStream[T]:
        """Return an iterator of ``fn(*args)`` over zipped `iterables`, in order.

        The `concurrent.futures.Executor.map` contract: the inputs are read and every
        task is submitted at once; results come in input order; a task's exception is
        raised when its result is reached (with a note naming its input position and
        worker).  With `chunksize` > 1, tasks go to workers in chunks of that many items,
        which makes tiny tasks much cheaper.  Closing the iterator early cancels the
        tasks not yet started.  For a lazy, bounded window use `imap`.
        `resume`, `checkpoint` and `checkpoint_every` as for `imap` (ordered): the
        iterator has ``state_dict()``, and a resumed map submits only the items not
        consumed (a `Sequence` input is indexed past the others).

        Raises:
            TypeError, ValueError: `fn` is not callable, `chunksize` < 1, a `resume`
                state (or `checkpoint` file) of another mode or input length.
            TimeoutError: From `__next__`, when the next result is not ready within
                `timeout` seconds of the call to `map`.
        """
        check_callable("fn", fn)
        check_int("chunksize", chunksize, 1, "items per task sent to a worker")
        length = None
        if iterables and all(isinstance(it, Sized) for it in iterables):
            length = min(len(it) for it in iterables)  # type: ignore[arg-type]
        consumed = self._resumed(True, length, resume, checkpoint, checkpoint_every)
        self._backend.prepare(fn)
        end = None if timeout is None else timeout + time.monotonic()
        if consumed:
            iterables = tuple(skip_consumed(it, consumed)[0] for it in iterables)
        argtuples = zip(*iterables, strict=False)
        futures: list[Future[Any]]
        results: Generator[T, None, None]
        if chunksize == 1:
            results = self._map_items(fn, argtuples, end, consumed)
        else:
            futures = []
            chunks: list[tuple[int, list[tuple[Any, ...]]]] = []
            start = consumed
            while chunk := list(islice(argtuples, chunksize)):
                futures.append(self._submit_at(None, run_chunk, (fn, start, chunk)))
                chunks.append((start, chunk))
                start += len(chunk)
            results = map_results(
                futures,
                end,
                chunks=chunks,
                resubmit=lambda pos, args: self._submit_at(pos, fn, args),
            )
        return MapStream(
            results,
            consumed=consumed,
            length=length,
            checkpoint=checkpoint,
            checkpoint_every=float(checkpoint_every),
        )

    def _resumed(
        self,
        ordered: bool,
        length: int | None,
        resume: dict[str, Any] | None,
        checkpoint: str | PathLike[str] | None,
        checkpoint_every: object,
    ) -> Any:
        """Check the resume options; return the consumed positions of the state to
        resume from (a count or a `Consumed`), or 0."""
        if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int | float):
            raise TypeError(f"checkpoint_every must be seconds >= 0, got {checkpoint_every!r}")
        if not checkpoint_every >= 0:
            raise ValueError(f"checkpoint_every must be seconds >= 0, got {checkpoint_every!r}")
        if resume is not None and checkpoint is not None:
            raise ValueError(
                "give resume= or checkpoint=, not both (checkpoint= resumes from its file)"
            )
        state = load_state(checkpoint) if checkpoint is not None else resume
        if state is None:
            return 0
        return parse_state(state, ordered=ordered, length=length)

    def _map_items(
        self,
        fn: Callable[..., T],
        argtuples: Iterator[tuple[Any, ...]],
        end: float | None,
        first: int,
    ) -> Generator[T, None, None]:
        """`map` with one task per item: all submitted now, under one owner."""
        self._check_usable()
        owner = StreamOwner()
        submit = self._backend.submit
        count = first
        try:
            for args in argtuples:
                submit((count, fn, args, None, owner, time.monotonic()))
                count += 1
        except BaseException:
            owner.cancelled = True  # nobody can have their results
            raise
        return map_outcomes(
            owner,
            count - first,
            end,
            first=first,
            keepalive=self,
            withdraw=self._backend.withdraw,
        )

    @overload
    def imap(
        self,
        fn: Callable[[A], T],
        iterable: Iterable[A],
        *,
        window: int | None = ...,
        ordered: bool = ...,
        on_error: Literal["raise"] = ...,
        resume: dict[str, Any] | None = ...,
        checkpoint: str | PathLike[str] | None = ...,
        checkpoint_every: float = ...,
    ) -> Stream[T]: ...

    @overload
    def imap(
        self,
        fn: Callable[[A], T],
        iterable: Iterable[A],
        *,
        window: int | None = ...,
        ordered: bool = ...,
        on_error: Literal["return"],
        resume: dict[str, Any] | None = ...,
        checkpoint: str | PathLike[str] | None = ...,
        checkpoint_every: float = ...,
    ) -> Stream[T | BaseException]: ...

    def imap(
        self,
        fn: Callable[[A], T],
        iterable: Iterable[A],
        *,
        window: int | None = None,
        ordered: bool = True,
        on_error: Literal["raise", "return"] = "raise",
        resume: dict[str, Any] | None = None,
        checkpoint: str | PathLike[str] | None = None,
        checkpoint_every: float = DEFAULT_CHECKPOINT_EVERY,
    ) -> Stream[T] | Stream[T | BaseException]:
        """Stream ``fn(item)`` over `iterable` lazily, keeping at most `window` in flight.

        Args:
            fn: Called with one item per task.
            iterable: Read lazily, never more than `window` items ahead of the consumer,
                so a generator of any length runs in constant memory.
            window: Most items read and not yet yielded, running or finished and
                waiting for their turn.  Default: adaptive; it starts at 2 x workers
                and doubles while items are handed out faster than 1 ms apiece,
                within 1024 items and 64 MiB (by `sys.getsizeof` of an item and a
                result; give `window` for large nested items).  A slow input (over
                1 ms per item) is read only after the results that are ready have
                been handed out, once every worker has an item.
            ordered: Yield in input order (default), or in the order tasks finish.
            on_error: ``"raise"``: a task's exception is raised here (same type, with a
                note naming its input position and worker) and everything queued behind
                it is cancelled.  ``"return"``: the exception object is yielded in
                place of the result and the stream goes on.
            resume: A `Stream.state_dict` of an earlier stream over the same input in
                the same mode: its consumed items are skipped without being run (a
                `Sequence` is indexed past them, an iterator read and discarded) and
                the rest is yielded as if the stream had never stopped.
            checkpoint: A file to keep the stream's state in: if it exists the stream
                resumes from it, and the state is saved to it atomically (temp file,
                fsync, rename) every `checkpoint_every` seconds, when the consumer asks
                for an item, and when the stream ends.  Not with `resume`.
            checkpoint_every: Seconds between saves of `checkpoint` (0: at every
                item).

        Returns:
            A `Stream`: an iterator of results that also has ``state_dict()`` and
            ``close()``.  Nothing runs until it is first advanced.

        Raises:
            TypeError, ValueError: Bad arguments, at the call, before any work starts;
                a `resume` state (or `checkpoint` file) of another mode or input length.
            RuntimeError: The pool has been shut down.
            BrokenPool: A worker's setup failed (whatever `on_error` says).

        **Abandoning:** ``break``, ``close()`` or garbage collection of the iterator
        cancels every queued task; tasks already running finish and are discarded.
        **Resuming:** an item counts as consumed when the consumer asks for the next
        one; consumed items are never run again, items in flight when a job stopped
        (at most `window`, plus with `checkpoint` those consumed since the last save)
        run again.
        """
        return self._stream(
            fn,
            iterable,
            window,
            ordered,
            on_error,
            1,
            batched=False,
            resume=resume,
            checkpoint=checkpoint,
            checkpoint_every=checkpoint_every,
        )

    @overload
    def imap_batches(
        self,
        fn: Callable[[A], T],
        iterable: Iterable[A],
        batch_size: int,
        *,
        prefetch: int = ...,
        on_error: Literal["raise"] = ...,
        resume: dict[str, Any] | None = ...,
        checkpoint: str | PathLike[str] | None = ...,
        checkpoint_every: float = ...,
    ) -> Stream[list[T]]: ...

    @overload
    def imap_batches(
        self,
        fn: Callable[[A], T],
        iterable: Iterable[A],
        batch_size: int,
        *,
        prefetch: int = ...,
        on_error: Literal["return"],
        resume: dict[str, Any] | None = ...,
        checkpoint: str | PathLike[str] | None = ...,
        checkpoint_every: float = ...,
    ) -> Stream[list[T | BaseException]]: ...

    def imap_batches(
        self,
        fn: Callable[[A], T],
        iterable: Iterable[A],
        batch_size: int,
        *,
        prefetch: int = 1,
        on_error: Literal["raise", "return"] = "raise",
        resume: dict[str, Any] | None = None,
        checkpoint: str | PathLike[str] | None = None,
        checkpoint_every: float = DEFAULT_CHECKPOINT_EVERY,
    ) -> Stream[list[T]] | Stream[list[T | BaseException]]:
        """Stream ``fn(item)`` over `iterable`, yielding lists of `batch_size` results.

        Keeps ``(prefetch + 1) * batch_size`` items in flight while the consumer works
        on a batch, as the seed's ``BatchThreader`` does; the last batch may be shorter.
        Otherwise as `imap` (ordered, lazy, same `on_error`, abandoning and resuming
        rules: the items of a batch count as consumed when the next batch is asked for).

        Raises:
            TypeError, ValueError: `batch_size` < 1, `prefetch` < 0, or as `imap`.
        """
        check_int("batch_size", batch_size, 1, "results per yielded list")
        check_int("prefetch", prefetch, 0, "batches kept in flight beyond the current one")
        window = (prefetch + 1) * batch_size
        return self._stream(
            fn,
            iterable,
            window,
            True,
            on_error,
            batch_size,
            batched=True,
            resume=resume,
            checkpoint=checkpoint,
            checkpoint_every=checkpoint_every,
        )

    def _stream(
        self,
        fn: Callable[[A], T],
        iterable: Iterable[A],
        window: int | None,
        ordered: bool,
        on_error: str,
        batch_size: int,
        *,
        batched: bool,
        resume: dict[str, Any] | None,
        checkpoint: str | PathLike[str] | None,
        checkpoint_every: float,
    ) -> Stream[Any]:
        check_callable("fn", fn)
        capacity = 2 * self.workers if window is None else window
        check_int("window", capacity, 1, "items in flight or buffered at once")
        if on_error not in _ON_ERROR:
            raise ValueError(f"on_error must be 'raise' or 'return', got {on_error!r}")
        source = iter(iterable)  # TypeError now, not at the first next()
        length = len(iterable) if isinstance(iterable, Sized) else None
        consumed = self._resumed(bool(ordered), length, resume, checkpoint, checkpoint_every)
        keyed = False
        if consumed:
            source, keyed = skip_consumed(iterable, consumed)
        self._check_usable()
        self._backend.prepare(fn)
        if self._finalizer.alive is False:
            raise RuntimeError("cannot start an imap on a steadypool Pool after shutdown()")
        if self._backend.broken is not None:
            raise self._backend.broken
        bar = None
        if self._progress:
            from tqdm.auto import tqdm

            done = consumed if isinstance(consumed, int) else len(consumed)
            bar = tqdm(
                total=length, initial=done, unit="item", desc="steadypool", dynamic_ncols=True
            )
            self._bars.add(bar)
        return Stream(
            self._backend.submit,
            fn,
            source,
            capacity=capacity,
            workers=self.workers,
            adaptive=window is None and not batched,
            ordered=bool(ordered),
            on_error=on_error,
            batch_size=batch_size,
            batched=batched,
            progress=bar,
            keepalive=self,
            withdraw=self._backend.withdraw,
            length=length,
            consumed=consumed,
            keyed=keyed,
            checkpoint=checkpoint,
            checkpoint_every=float(checkpoint_every),
        )

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the pool: no new tasks; workers stop once the queue is done.

        Args:
            wait: Return only when every worker has stopped (running tasks finish).
            cancel_futures: Cancel queued tasks instead of running them; a stream
                waiting on one raises `concurrent.futures.CancelledError`.

        **Idempotent;** safe to call from a task, even from several at once: called
        from a worker of this pool it does not wait (the other workers may be waiting
        for it); the caller outside the pool that shuts down with ``wait=True`` waits.
        """
        self._finalizer.detach()
        _close(self._backend, self._monitor, wait=wait, cancel=cancel_futures)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        if exc_type is not None and not issubclass(exc_type, Exception):
            # Ctrl-C or exit: do not wait on running tasks, and run nothing more.
            self.shutdown(wait=False, cancel_futures=True)
            self._backend.halt()
            _exit.interrupted(self._backend)
            return
        if exc_type is not None:
            # The consumer failed: results of a stream it left are thrown away, so what
            # computes them is stopped where it can be (issue 17, hole 14).
            self._backend.stop_unwanted()
        self.shutdown(wait=True)

    def __repr__(self) -> str:
        state = "open" if self._finalizer.alive else "shut down"
        return f"<steadypool.Pool workers={self.workers} {state}>"


def _close(backend: Backend, monitor: Monitor | None, *, wait: bool, cancel: bool) -> None:
    """Shut the backend down, then its monitor (which keeps timing items out meanwhile)."""
    try:
        backend.shutdown(wait=wait, cancel=cancel)
    finally:
        if monitor is not None:
            monitor.stop(wait=wait)
