"""Behaviour only the Ray backend has: actors killed from outside, timeouts, setup,
and the Ray instance's life (run where the ray extra is installed)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from functools import partial
from typing import TYPE_CHECKING, Any

import pytest

import steadypool as sp

from ._faults import Gate, Journal, hang

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray
WAIT = 60.0


@pytest.fixture(autouse=True)
def _ray(ray_instance: None) -> None:
    """Every test here runs against the session's local Ray instance."""


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Gate]:
    g = Gate(tmp_path / "gate")
    yield g
    g.set()


def _actor(pool: sp.Pool, index: int) -> Any:
    return pool._backend._slots[index].actor  # type: ignore[attr-defined]


@pytest.mark.parametrize("retries", [0, 1])
def test_ray_kill_of_a_busy_actor_fails_or_retries_its_item(
    retries: int, tmp_path: Path, gate: Gate
) -> None:
    """ray.kill from outside: WorkerCrashed for that item (or a retry on a fresh actor);
    a new actor takes the index and the pool goes on."""
    started = Journal(tmp_path / "started")

    def task(x: int) -> int:
        started.record(x)
        if len(started.read()) == 1:
            hang(gate)
        return x

    with sp.Pool(1, backend="ray", retries=retries) as pool:
        future = pool.submit(task, 7)
        started.wait_for(1)
        ray.kill(_actor(pool, 0), no_restart=True)
        if retries:
            assert future.result(WAIT) == 7
        else:
            with pytest.raises(sp.WorkerCrashed, match="Ray actor") as info:
                future.result(WAIT)
            assert "died while running a submitted task" in str(info.value)
        assert pool.submit(abs, -5).result(WAIT) == 5
        assert pool.stats().replaced == 1


def test_task_timeout_kills_the_actor_and_the_pool_goes_on(gate: Gate) -> None:
    """An item past task_timeout fails with TaskTimeout (its stack read from the actor);
    its actor is replaced."""
    with sp.Pool(1, backend="ray", task_timeout=1.0) as pool:
        out = list(pool.imap(lambda x: hang(gate) if x == 1 else x, range(3), on_error="return"))
        assert out[0] == 0
        assert out[2] == 2
        error = out[1]
        assert isinstance(error, sp.TaskTimeout)
        assert "in hang" in error.stack
        assert pool.submit(abs, -2).result(WAIT) == 2


def test_stall_report_names_the_actor_and_its_node(gate: Gate) -> None:
    """A stall report on Ray says where: the actor's process and node, and its stack."""
    reports: list[sp.StallReport] = []
    with sp.Pool(1, backend="ray", stall_timeout=0.5, on_stall=reports.append) as pool:
        future = pool.submit(hang, gate)
        deadline = __import__("time").monotonic() + WAIT
        # The actor's start may be reported first (setup is watched too): wait for the task.
        while not [r for r in reports if not r.busy[0].setup]:
            assert __import__("time").monotonic() < deadline
            __import__("time").sleep(0.02)
        gate.set()
        future.result(WAIT)
    (busy,) = next(r for r in reports if not r.busy[0].setup).busy
    assert "Ray actor pid" in busy.where
    assert "on node" in busy.where
    assert "in hang" in busy.stack


def test_setup_exception_breaks_the_pool() -> None:
    """An exception in setup, in the actor: BrokenPool with the remote cause."""

    def setup(worker: sp.Worker) -> None:
        raise OSError("no such device")

    with sp.Pool(2, backend="ray", setup=setup) as pool, pytest.raises(sp.BrokenPool) as info:
        list(pool.imap(abs, range(4)))
    assert isinstance(info.value.__cause__, OSError)


def test_importing_steadypool_never_imports_ray() -> None:
    """ray is an optional extra, loaded only by backend='ray'."""
    code = (
        "import steadypool, sys; sp = steadypool.Pool(1); sp.shutdown(); "
        "print('ray' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "False"


STARTS_RAY = textwrap.dedent(
    """
    import ray, steadypool as sp
    assert not ray.is_initialized()
    with sp.Pool(2, backend="ray") as pool:
        assert ray.is_initialized()
        assert list(pool.imap(abs, [-1, -2, -3])) == [1, 2, 3]
    print("left running:", ray.is_initialized())
    """
)


def test_a_ray_instance_started_by_a_pool_is_shut_down_with_it() -> None:
    """Without a connected instance a pool starts a local one, and leaves none behind."""
    out = subprocess.run(
        [sys.executable, "-c", STARTS_RAY],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        env={**__import__("os").environ, "RAY_ADDRESS": ""},
    )
    assert "left running: False" in out.stdout


@pytest.mark.parametrize("fault", ["exit", "timeout"])
def test_actor_loss_with_queued_calls_behind_it_loses_nothing(fault: str, gate: Gate) -> None:
    """Once tasks are short an actor holds calls queued behind the running one; when it
    dies (or is killed on a timeout), those never started: they run again elsewhere, and
    only the bad item fails."""

    def task(x: int) -> int:
        if x == 150:
            if fault == "exit":
                __import__("os")._exit(3)
            hang(gate)
        return x

    options: dict[str, Any] = {"task_timeout": 2.0} if fault == "timeout" else {}
    with sp.Pool(1, backend="ray", **options) as pool:
        out = list(pool.imap(task, range(300), window=8, on_error="return"))
    assert isinstance(out[150], sp.WorkerCrashed if fault == "exit" else sp.TaskTimeout)
    assert [x for i, x in enumerate(out) if i != 150] == [x for x in range(300) if x != 150]


def _noop(x: int) -> int:
    return x


def test_many_tiny_tasks_on_several_actors_all_come_back() -> None:
    """Regression: thousands of tiny tasks over 2 actors with a wide window all arrive
    (an early attempt at queueing calls on actors lost one to a callback race)."""
    with sp.Pool(2, backend="ray", stall_timeout=20, on_stall="raise") as pool:
        assert list(pool.imap(_noop, range(3000), window=64)) == list(range(3000))


# A three-node cluster simulated on this machine (ray.cluster_utils): nodes are lost
# while actors run setup and while they run items, with a node added meanwhile.  The node
# removed is one that hosts actors (read from the pool's slots once the actors run).
NODE_LOSS = textwrap.dedent(
    """
    import logging, sys, time
    import ray
    from ray.cluster_utils import Cluster
    import steadypool as sp

    def task(x):
        time.sleep(0.1)
        return x * x

    def slow_setup(worker):
        time.sleep(1.5)

    def busiest(pool, nodes):
        # the worker node hosting most actors, once every actor runs (None: all on head)
        deadline = time.monotonic() + 60
        slots = pool._backend._slots
        while not all(s.begun for s in list(slots.values())):
            assert time.monotonic() < deadline, "actors did not start"
            time.sleep(0.05)
        where = [s.where for s in list(slots.values())]
        counts = {n: sum(n.node_id[:12] in w for w in where) for n in nodes}
        node = max(counts, key=counts.get)
        return node if counts[node] else None

    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level=logging.ERROR, log_to_driver=False)
    try:
        with sp.Pool(6, backend="ray", retries=5, setup=slow_setup) as pool:
            victim = busiest(pool, nodes)
            if victim is None:
                print("all actors on the head node")
                sys.exit(3)
            cluster.remove_node(victim)  # its actors die while in setup
            nodes.remove(victim)
            out = []
            for i, result in enumerate(pool.imap(task, range(40), window=8)):
                out.append(result)
                if i == 5:  # and a second node, while items run
                    cluster.add_node(num_cpus=1)
                    cluster.remove_node(nodes[0])
            assert out == [x * x for x in range(40)], out
            assert list(pool.imap(abs, range(-3, 0))) == [3, 2, 1]
            print("replaced", pool.stats().replaced, "failed", pool.stats().failed)
    finally:
        ray.shutdown()
        cluster.shutdown()
    """
)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_losing_nodes_of_a_cluster_keeps_the_pool_going() -> None:
    """On a multi-node cluster, actors lost with their node (in setup or running items)
    are crashes: replaced on live nodes and their items retried; every result arrives
    and the pool stays usable (it used to break with 'setup(worker) raised
    ActorDiedError')."""
    done = subprocess.run(
        [sys.executable, "-c", NODE_LOSS], capture_output=True, text=True, timeout=200
    )
    if done.returncode == 3:
        pytest.skip("Ray placed every actor on the head node: no node loss to test")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "BrokenPool" not in done.stderr
    replaced, failed = done.stdout.split()[1::2]
    assert int(replaced) >= 1
    assert int(failed) == 0


def _exit_at(x: int, at: int) -> int:
    if x == at:
        __import__("os")._exit(3)
    return x


def test_a_crash_in_a_batch_of_tiny_items_names_its_own_item() -> None:
    """Tiny items go to actors in batches; when an actor dies in one, its items run
    again one per call, so the crash names its own item and every other item is
    delivered once, in order."""
    with sp.Pool(2, backend="ray") as pool:
        out = list(pool.imap(partial(_exit_at, at=2000), range(3000), on_error="return"))
        stats = pool.stats()
    assert isinstance(out[2000], sp.WorkerCrashed)
    assert "item 2000" in str(out[2000])
    assert [x for i, x in enumerate(out) if i != 2000] == [x for x in range(3000) if x != 2000]
    assert (stats.done, stats.failed) == (3000, 1)


def _pause_or_gate(x: int, gate: Gate) -> int:
    if x == 200:
        __import__("time").sleep(0.1)  # the workload: an item longer than a first drain
    if x == 250:
        assert gate.wait(WAIT)
    return x


def test_a_long_batch_is_drained_again_and_again(tmp_path: Path) -> None:
    """A batch that runs on is drained repeatedly, not once: in a batch of tiny items,
    those behind a 0.1 s one finish after the batch's first drain and still arrive
    while a later item of the batch waits (for the consumer to have them).  (Batches
    reach 256 items after the first few dozen, so items 200 and 250 share one.)"""
    gate = Gate(tmp_path / "gate")
    released_by: list[str] = []

    def release(who: str) -> None:
        if not gate.is_set():
            released_by.append(who)
            gate.set()

    safety = threading.Timer(20.0, release, ("timer",))  # never a hang, only a failure
    safety.start()
    try:
        with sp.Pool(1, backend="ray") as pool:
            task = partial(_pause_or_gate, gate=gate)
            for result in pool.imap(task, range(600), window=1024):
                if result == 249:
                    release("consumer")
    finally:
        safety.cancel()
        safety.join(WAIT)
    assert released_by == ["consumer"]


def test_a_killed_actor_is_named_with_its_last_resident_memory(tmp_path: Path, gate: Gate) -> None:
    """The WorkerCrashed of an actor killed mid-item gives its resident memory after its
    last batch, and max_worker_memory as the way to recycle it before it is killed."""
    started = Journal(tmp_path / "started")

    def task(x: int) -> int:
        started.record(x)
        if x == 2:
            hang(gate)
        return x

    with sp.Pool(1, backend="ray") as pool:
        assert [pool.submit(task, x).result(WAIT) for x in range(2)] == [0, 1]
        future = pool.submit(task, 2)
        started.wait_for(3)
        ray.kill(_actor(pool, 0), no_restart=True)
        with pytest.raises(sp.WorkerCrashed) as info:
            future.result(WAIT)
    message = str(info.value)
    assert "its resident memory was " in message
    assert "MiB after its last batch, 2 items in" in message
    assert "max_worker_memory" in message
