"""A long job that test_kill_resume.py kills with SIGKILL at random points and reruns.

Usage: ``python _resume_job.py DB BACKEND ORDER SAVE N WINDOW``: squares ``range(N)``
through ``Pool.imap`` (ORDER ``ordered`` or ``unordered``) and writes each result into
the SQLite file DB, counting in ``attempts`` how often each item was delivered; every
computation appends the item to ``DB.computed``.  SAVE says where the stream's state
goes: ``db`` (in the same transaction as the result, through ``state_dict``) or
``checkpoint`` (``checkpoint=DB.checkpoint``, saved by the stream itself).
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from functools import partial

import steadypool as sp


def square(x: int, computed: str) -> tuple[int, int]:
    """The job's work: record the computation, then return the item and its square."""
    fd = os.open(computed, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{x}\n".encode())  # one small O_APPEND write: atomic
    finally:
        os.close(fd)
    return x, x * x


def main() -> None:
    db_path, backend, order, save, count, window = sys.argv[1:7]
    db = sqlite3.connect(db_path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")  # a reader (the test) never blocks the job
    db.execute("PRAGMA synchronous=NORMAL")  # durable against a killed process
    db.execute(
        "CREATE TABLE IF NOT EXISTS results "
        "(item INTEGER PRIMARY KEY, value INTEGER, attempts INTEGER)"
    )
    db.execute("CREATE TABLE IF NOT EXISTS state (id INTEGER PRIMARY KEY, json TEXT)")
    resume, checkpoint = None, None
    if save == "db":
        row = db.execute("SELECT json FROM state WHERE id = 0").fetchone()
        resume = None if row is None else json.loads(row[0])
    else:
        checkpoint = db_path + ".checkpoint"
    work = partial(square, computed=db_path + ".computed")
    with sp.Pool(2, backend=backend) as pool:
        stream = pool.imap(
            work,
            range(int(count)),
            window=int(window),
            ordered=order == "ordered",
            resume=resume,
            checkpoint=checkpoint,
            checkpoint_every=0.05,
        )
        for item, value in stream:
            db.execute("BEGIN")
            db.execute(
                "INSERT INTO results VALUES (?, ?, 1) "
                "ON CONFLICT(item) DO UPDATE SET attempts = attempts + 1",
                (item, value),
            )
            if save == "db":
                state = json.dumps(stream.state_dict())
                db.execute("INSERT OR REPLACE INTO state VALUES (0, ?)", (state,))
            db.execute("COMMIT")
        if save == "db":  # the last item is consumed once the stream is exhausted
            state = json.dumps(stream.state_dict())
            db.execute("INSERT OR REPLACE INTO state VALUES (0, ?)", (state,))
    db.close()


if __name__ == "__main__":
    main()
