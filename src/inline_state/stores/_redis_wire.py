"""One multiplexed, auto-pipelined connection to Redis for a turn's commands.

Every command queued while the event loop runs one round of callbacks goes out in one
write; replies come back in order and hiredis parses them, so concurrent turns share
round trips and the client costs a few microseconds per command. A waiter that goes
away (its deadline passed, its handler was cancelled) keeps its place in the queue: its
replies are read and dropped, so no reply ever reaches another waiter. Deadlines are
kept by one timer per connection, not one per call: a call past its deadline fails with
``TimeoutError``. When the connection is lost, every command in flight fails with
``ConnectionError`` and the next call connects again; a command whose reply has not
arrived within the timeout drops the connection the same way, failing the others (Redis
was paused, or the network is gone).

Only what the hot path needs: AUTH (with or without an ACL user), SELECT, TLS.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import Sequence
from typing import Any

import hiredis

__all__: list[str] = []

ReplyError = hiredis.ReplyError
_CLOCK_RESOLUTION = time.get_clock_info("monotonic").resolution
Arg = bytes | str | int


def encode(command: Sequence[Arg]) -> bytes:
    """A command in RESP: an array of bulk strings (hiredis packs it, in C)."""
    try:
        packed: bytes = hiredis.pack_command(tuple(command))  # type: ignore[arg-type]  # the stub takes one argument
        return packed
    except UnicodeEncodeError:  # a lone surrogate: sent as its surrogatepass bytes
        return _encode(command)


def bulk(text: str) -> bytes:
    """One bulk string of RESP."""
    data = text.encode("utf-8", "surrogatepass")
    return b"$%d\r\n%s\r\n" % (len(data), data)


def bulks(args: Sequence[Arg]) -> bytes:
    """Arguments as bulk strings, to follow an array header and bulks of one's own."""
    packed = encode(args)
    return packed[packed.index(b"\r\n") + 2 :]


def _encode(command: Sequence[Arg]) -> bytes:
    parts = [b"*%d\r\n" % len(command)]
    for arg in command:
        if isinstance(arg, str):
            data = arg.encode("utf-8", "surrogatepass")
        elif isinstance(arg, int):
            data = b"%d" % arg
        else:
            data = arg
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _Waiter:
    __slots__ = ("deadline", "future", "replies", "sent_at", "wanted")

    def __init__(
        self, future: asyncio.Future[list[Any]], wanted: int, sent_at: float, deadline: float
    ) -> None:
        self.future = future
        self.wanted = wanted
        self.replies: list[Any] = []
        self.sent_at = sent_at
        self.deadline = deadline


class _Protocol(asyncio.Protocol):
    """One transport's bytes; once its connection moved on to another, it is ignored."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.reader = hiredis.Reader()
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def _current(self) -> bool:
        return self.transport is not None and self.connection._transport is self.transport

    def data_received(self, data: bytes) -> None:
        connection = self.connection
        if not self._current():
            return
        connection._last_read = time.monotonic()
        reader = self.reader
        reader.feed(data)
        waiting = connection._waiting
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                connection._drop(ConnectionError(f"Redis sent what is not RESP: {exc}"))
                return
            if reply is False:
                return
            if not waiting:  # a reply nobody asked for: the stream cannot be trusted
                connection._drop(ConnectionError("Redis sent an unexpected reply"))
                return
            waiter = waiting[0]
            waiter.replies.append(reply)
            if len(waiter.replies) == waiter.wanted:
                waiting.popleft()
                if not waiter.future.done():
                    waiter.future.set_result(waiter.replies)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._current():
            self.connection._drop(ConnectionError(f"the connection to Redis was lost: {exc}"))


class Connection:
    """A lazily (re)connecting, multiplexed connection; ``call`` sends commands."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str | None = None,
        password: str | None = None,
        db: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 1.0,
    ) -> None:
        self.host, self.port = host, port
        self._hello: list[list[Arg]] = []
        if password is not None:
            self._hello.append(["AUTH", username, password] if username else ["AUTH", password])
        if db:
            self._hello.append(["SELECT", db])
        self._ssl = ssl_context
        self.timeout = timeout
        self._transport: asyncio.Transport | None = None
        self._connecting: asyncio.Future[None] | None = None
        self._waiting: collections.deque[_Waiter] = collections.deque()
        self._buffer: list[bytes] = []
        self._flush_scheduled = False
        self._last_read = 0.0
        self._closed = False
        self._sweep: asyncio.TimerHandle | None = None

    async def call(
        self, commands: Sequence[Sequence[Arg]], deadline: float | None = None
    ) -> list[Any]:
        """Send commands (in one write with any others queued this round) and return
        their replies in order; error replies come back as ``ReplyError`` values.

        ``deadline`` is a ``loop.time()`` (default: ``timeout`` from now). Raises
        TimeoutError past it, ConnectionError when the connection fails first.
        """
        return await self.call_encoded([encode(c) for c in commands], deadline)

    async def call_encoded(self, encoded: list[bytes], deadline: float | None = None) -> list[Any]:
        """``call`` for commands already in RESP (see ``encode``)."""
        if not encoded:  # no reply to wait for: a waiter would hold the queue's head
            return []
        if deadline is None:
            deadline = asyncio.get_running_loop().time() + self.timeout
        # Nothing is sent before a connection is up and its AUTH/SELECT succeeded; no
        # await between this check and _send, so the waiter joins that connection.
        while not self._ready():
            async with asyncio.timeout_at(deadline):
                await self._connect()
        return await self._send(encoded, deadline)

    def send_now(self, encoded: list[bytes], deadline: float) -> asyncio.Future[list[Any]] | None:
        """Queue commands (at least one) if the connection is up, and return the future
        of their replies (as ``call_encoded`` returns them); None if it must connect
        first (then use ``call_encoded``)."""
        return self._send(encoded, deadline) if self._ready() else None

    def _ready(self) -> bool:
        return not (
            self._transport is None
            or self._connecting is not None
            or (self._waiting and self._stalled())
        )

    def _stalled(self) -> bool:
        waiting = self._waiting
        if waiting:
            quiet = time.monotonic() - max(waiting[0].sent_at, self._last_read)
            if quiet >= self.timeout:  # nothing read for that long: Redis is paused or gone
                self._drop(ConnectionError(f"Redis did not answer within {self.timeout} s"))
                return True
        return False

    def _send(self, encoded: list[bytes], deadline: float) -> asyncio.Future[list[Any]]:
        if self._transport is None:
            raise ConnectionError("the connection to Redis was lost")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        self._waiting.append(_Waiter(future, len(encoded), time.monotonic(), deadline))
        self._buffer += encoded
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        sweep = self._sweep
        if sweep is None or deadline < sweep.when():
            if sweep is not None:
                sweep.cancel()
            self._sweep = loop.call_at(deadline, self._expire)
        return future

    def _expire(self) -> None:
        """Fail the waiters whose deadline passed with TimeoutError (their replies are
        still read and dropped), then drop the connection if Redis went quiet; wake
        again for the next deadline."""
        self._sweep = None
        loop = asyncio.get_running_loop()
        now = loop.time() + _CLOCK_RESOLUTION  # the loop runs timers that early
        upcoming = None
        for waiter in self._waiting:
            if waiter.future.done():
                continue
            if waiter.deadline <= now:
                waiter.future.set_exception(TimeoutError())
            elif upcoming is None or waiter.deadline < upcoming:
                upcoming = waiter.deadline
        if self._stalled():
            return
        if upcoming is not None:
            self._sweep = loop.call_at(upcoming, self._expire)

    def _flush(self) -> None:
        self._flush_scheduled = False
        data, self._buffer = b"".join(self._buffer), []
        if self._transport is not None and data:
            self._transport.write(data)

    async def _connect(self) -> None:
        if self._closed:
            raise ConnectionError("the connection to Redis was closed")
        if self._connecting is not None:  # another call is connecting: wait for it
            await asyncio.shield(self._connecting)
            return
        loop = asyncio.get_running_loop()
        connecting = self._connecting = loop.create_future()
        transport: asyncio.Transport | None = None
        try:
            transport, _ = await loop.create_connection(
                lambda: _Protocol(self),
                self.host,
                self.port,
                ssl=self._ssl,
                server_hostname=self.host if self._ssl is not None else None,
            )
            if self._closed:
                raise ConnectionError("the connection to Redis was closed")
            self._transport = transport
            self._waiting.clear()  # (empty: every earlier waiter failed with its connection)
            self._last_read = time.monotonic()
            if self._hello:
                hello = [encode(c) for c in self._hello]
                for reply in await self._send(hello, loop.time() + self.timeout):
                    if isinstance(reply, ReplyError):
                        raise ConnectionError(f"Redis refused the connection: {reply}")
            connecting.set_result(None)
        except BaseException as exc:
            if transport is not None:
                if self._transport is transport:
                    self._drop(ConnectionError(f"connecting to Redis failed: {exc!r}"))
                else:
                    transport.abort()
            failure = exc if isinstance(exc, ConnectionError) else None
            connecting.set_exception(
                failure or ConnectionError(f"connecting to Redis failed: {exc!r}")
            )
            connecting.exception()  # retrieved: waiters re-raise their own
            raise
        finally:
            self._connecting = None

    def _drop(self, error: ConnectionError) -> None:
        """Close the connection and fail every command in flight with ``error``."""
        transport, self._transport = self._transport, None
        waiting, self._waiting = self._waiting, collections.deque()
        self._buffer = []
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        if transport is not None:
            transport.abort()
        for waiter in waiting:
            if not waiter.future.done():
                waiter.future.set_exception(error)

    def close(self) -> None:
        """Drop the connection for good; commands in flight fail, later ones too."""
        self._closed = True
        self._drop(ConnectionError("the connection to Redis was closed"))
