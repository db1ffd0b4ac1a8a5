"""A thread that owns one SQLite connection and runs submitted functions on it.

The writer's thread commits in groups: it takes every queued function, runs each in a
savepoint inside one ``BEGIN IMMEDIATE`` transaction, commits once, and only then tells
the event loop (first what the commit changed, then each caller's result). A caller is
therefore answered only after its write committed.
"""

from __future__ import annotations

import abc
import asyncio
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from .._errors import StoreUnavailable

__all__: list[str] = []

T = TypeVar("T")
_STOP = object()
_BATCH = 512


class Transactions(abc.ABC):
    """What a group-committing thread tells about its transactions (on its thread)."""

    @abc.abstractmethod
    def begin(self, conn: sqlite3.Connection) -> None:
        """The transaction began (the write lock is held)."""

    @abc.abstractmethod
    def operation_failed(self) -> None:
        """The current operation raised and was rolled back to its savepoint."""

    @abc.abstractmethod
    def before_commit(self, conn: sqlite3.Connection) -> None:
        """Every operation ran; the transaction commits next."""

    @abc.abstractmethod
    def committed(self) -> Callable[[], None] | None:
        """The commit succeeded: a function for the event loop to run before any
        caller of the transaction is answered, or None."""

    @abc.abstractmethod
    def rolled_back(self) -> None:
        """The transaction failed and was rolled back."""


class Worker(threading.Thread):
    """One connection and the thread that uses it.

    With ``transactions``, the thread drains its queue and runs the batch in one
    transaction (each function in a savepoint), committing once before answering.
    """

    def __init__(
        self,
        name: str,
        connect: Callable[[], sqlite3.Connection],
        transactions: Transactions | None = None,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self._connect = connect
        self._transactions = transactions
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.ready = threading.Event()
        self.startup_error: BaseException | None = None

    def submit(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Queue ``fn`` to run on the connection; the future resolves on this loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put((loop, future, fn))
        return future

    def stop(self) -> None:
        """Finish what is queued, then close the connection and end the thread."""
        self._queue.put(_STOP)

    def run(self) -> None:
        try:
            conn = self._connect()
        except BaseException as exc:
            self.startup_error = exc
            self.ready.set()
            return
        self.ready.set()
        try:
            while True:
                batch = [self._queue.get()]
                if self._transactions is not None:
                    while len(batch) < _BATCH:
                        try:
                            batch.append(self._queue.get_nowait())
                        except queue.Empty:
                            break
                stop = any(item is _STOP for item in batch)
                work = [item for item in batch if item is not _STOP]
                if work:
                    if self._transactions is None:
                        self._run_each(conn, work)
                    else:
                        self._run_batch(conn, work, self._transactions)
                if stop:
                    return
        finally:
            conn.close()

    @staticmethod
    def _run_each(conn: sqlite3.Connection, batch: list[Any]) -> None:
        for loop, future, fn in batch:
            error: BaseException | None = None
            try:
                result = fn(conn)
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                result, error = None, StoreUnavailable(f"SQLite: {exc}")
            except Exception as exc:  # the caller's to see
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                result, error = None, exc
            loop.call_soon_threadsafe(_resolve, future, result, error)

    @staticmethod
    def _run_batch(conn: sqlite3.Connection, batch: list[Any], tx: Transactions) -> None:
        outcomes: list[tuple[Any, Any, Any, BaseException | None]] = []
        publish: Callable[[], None] | None = None
        try:
            conn.execute("BEGIN IMMEDIATE")
            tx.begin(conn)
            for loop, future, fn in batch:
                conn.execute("SAVEPOINT op")
                try:
                    result = fn(conn)
                except sqlite3.Error:
                    raise
                except Exception as exc:  # refused by the rules (or a bug): undo it, go on
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    tx.operation_failed()
                    outcomes.append((loop, future, None, exc))
                    continue
                conn.execute("RELEASE op")
                outcomes.append((loop, future, result, None))
            tx.before_commit(conn)
            conn.execute("COMMIT")
            publish = tx.committed()
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            tx.rolled_back()
            failure = StoreUnavailable(f"SQLite: {exc}")
            outcomes = [(loop, future, None, failure) for loop, future, _ in batch]
        if publish is not None:
            batch[0][0].call_soon_threadsafe(publish)
        for loop, future, result, error in outcomes:
            loop.call_soon_threadsafe(_resolve, future, result, error)


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
