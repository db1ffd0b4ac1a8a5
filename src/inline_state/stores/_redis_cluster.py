"""Redis Cluster for a turn's commands: the slot map, one multiplexed connection per
master, and the cluster's redirections.

Each command comes with its hash slot. A call sends every command to the master that
serves its slot (over that master's ``_redis_wire.Connection``, so concurrent turns share
writes), then handles what the cluster answered, command by command, until the deadline:

- ``MOVED slot host:port``: the slot has a new owner for good; the map takes it at once
  and is read again from the cluster in the background; the command goes to the owner.
- ``ASK slot host:port``: the key is being migrated; the command goes to that node once,
  right behind ``ASKING`` in the same write.
- ``TRYAGAIN`` (a migration splits the command's keys) and ``CLUSTERDOWN``: sent again
  after a short, growing pause.
- a lost connection: the map is read again (the node may have gone away) and the
  command sent once more.

Callers send only commands that are safe to repeat (reads, PEXPIRE, stamped scripts).
The map comes from ``CLUSTER SHARDS`` (``CLUSTER SLOTS`` before Redis 7), asked of every
known node at once; the first answer wins (a stale one is corrected by the next MOVED).
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
from collections.abc import Iterable, Sequence
from typing import Any

from . import _redis_wire

__all__: list[str] = []

SLOTS = 16384
Address = tuple[str, int]
_MAX_ROUNDS = 256  # a guard: the deadline bounds a call, the pauses its rounds
_PAUSES = (0.005, 0.01, 0.02, 0.04, 0.08)  # before resending after TRYAGAIN, CLUSTERDOWN
_REFRESH_EVERY = 0.1  # seconds between background map reads while the cluster changes
_SHARDS = _redis_wire.encode(("CLUSTER", "SHARDS"))
_SLOTS = _redis_wire.encode(("CLUSTER", "SLOTS"))
_ASKING = _redis_wire.encode(("ASKING",))
_ReplyError = _redis_wire.ReplyError


def key_slot(key: bytes) -> int:
    """The hash slot of a key: CRC16 (XMODEM) of its hash tag, the text between its
    first ``{`` and the next ``}`` if that is not empty, else of the whole key."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return binascii.crc_hqx(key, 0) & (SLOTS - 1)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _address(text: str, asked: Address) -> Address:
    """``host:port`` of a redirection; an empty host is the node that answered."""
    host, _, port = text.rpartition(":")
    return (host or asked[0], int(port))


def parse_shards(reply: Any, asked: Address) -> list[tuple[int, int, Address]]:
    """Slot ranges and their masters from a ``CLUSTER SHARDS`` reply (RESP2: each shard
    and each node a flat list of names and values)."""
    ranges: list[tuple[int, int, Address]] = []
    for shard in reply:
        fields = dict(zip(shard[::2], shard[1::2], strict=True))
        masters = [dict(zip(n[::2], n[1::2], strict=True)) for n in fields[b"nodes"]]
        masters = [n for n in masters if n.get(b"role") == b"master"]
        # A master that failed is listed until its replica takes over; prefer one online.
        masters.sort(key=lambda n: n.get(b"health") != b"online")
        if not masters or not fields[b"slots"]:
            continue
        node = masters[0]
        host = _text(node.get(b"endpoint") or b"")
        if host == "?":
            host = _text(node.get(b"ip") or b"")
        address = (host or asked[0], int(node[b"port"]))
        bounds = [int(b) for b in fields[b"slots"]]
        ranges += [(bounds[i], bounds[i + 1], address) for i in range(0, len(bounds), 2)]
    return ranges


def parse_slots(reply: Any, asked: Address) -> list[tuple[int, int, Address]]:
    """Slot ranges and their masters from a ``CLUSTER SLOTS`` reply."""
    ranges: list[tuple[int, int, Address]] = []
    for entry in reply:
        low, high, master = entry[0], entry[1], entry[2]
        if master[0] == b"?":  # no endpoint known: the slots stay unserved for now
            continue
        host = _text(master[0]) if master[0] is not None else ""
        ranges.append((int(low), int(high), (host or asked[0], int(master[1]))))
    return ranges


class Cluster:
    """The masters of one Redis Cluster, a multiplexed connection to each; ``call``
    sends commands by hash slot (see the module's docstring)."""

    def __init__(
        self,
        seeds: Sequence[Address],
        *,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 1.0,
    ) -> None:
        self._seeds = list(seeds)
        self._username, self._password = username, password
        self.timeout = timeout
        self._connections: dict[Address, _redis_wire.Connection] = {}
        self._owners: list[_redis_wire.Connection | None] = [None] * SLOTS
        self._known: list[Address] = list(seeds)
        self._use_shards = True
        self._refreshing: asyncio.Task[None] | None = None
        self._refreshed_at = -1e9
        self._unreachable = ""  # why the last read of the map failed, if it did
        self._closed = False

    def connection(self, address: Address) -> _redis_wire.Connection:
        """The multiplexed connection to one node (made when first asked for)."""
        connection = self._connections.get(address)
        if connection is None:
            if self._closed:
                raise ConnectionError("the connection to Redis was closed")
            connection = self._connections[address] = _redis_wire.Connection(
                address[0],
                address[1],
                username=self._username,
                password=self._password,
                timeout=self.timeout,
            )
        return connection

    # -- the slot map -------------------------------------------------------------------

    async def refresh(self, deadline: float | None = None) -> None:
        """Read the slot map from the cluster: every known node is asked at once, the
        first to answer is taken. Raises ConnectionError if none answers in time."""
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = loop.time() + self.timeout
        self._refreshed_at = loop.time()
        asks = [asyncio.ensure_future(self._ask_map(a, deadline)) for a in self._known]
        failures: list[str] = []
        try:
            for next_done in asyncio.as_completed(asks):
                try:
                    self._take_map(*(await next_done))
                    self._unreachable = ""
                    return
                except (
                    ConnectionError,
                    OSError,
                    TimeoutError,
                    LookupError,
                    TypeError,
                    ValueError,
                ) as exc:
                    failures.append(repr(exc))
        finally:
            for ask in asks:
                ask.cancel()
            await asyncio.gather(*asks, return_exceptions=True)
        self._unreachable = f"no node of the Redis Cluster answered: {'; '.join(failures)}"
        raise ConnectionError(self._unreachable)

    async def _ask_map(
        self, address: Address, deadline: float
    ) -> tuple[list[tuple[int, int, Address]], Address]:
        connection = self.connection(address)
        if self._use_shards:
            [reply] = await connection.call_encoded([_SHARDS], deadline)
            if not isinstance(reply, _redis_wire.ReplyError):
                return parse_shards(reply, address), address
            if "unknown subcommand" not in str(reply).lower():
                raise ConnectionError(f"CLUSTER SHARDS failed: {reply}")
            self._use_shards = False  # an older Redis
        [reply] = await connection.call_encoded([_SLOTS], deadline)
        if isinstance(reply, _redis_wire.ReplyError):
            raise ConnectionError(f"CLUSTER SLOTS failed: {reply}")
        return parse_slots(reply, address), address

    def _take_map(self, ranges: list[tuple[int, int, Address]], asked: Address) -> None:
        if not ranges:
            raise ValueError(f"the node at {asked[0]}:{asked[1]} serves no slots yet")
        owners: list[_redis_wire.Connection | None] = [None] * SLOTS
        for low, high, address in ranges:
            connection = self.connection(address)
            owners[low : high + 1] = [connection] * (high + 1 - low)
        self._owners = owners
        # Asked first next time: the masters, then where the map came from to begin with.
        self._known = list(dict.fromkeys([address for _, _, address in ranges] + self._seeds))

    def _refresh_soon(self) -> None:
        """Read the map again in the background, at most once per ``_REFRESH_EVERY``."""
        loop = asyncio.get_running_loop()
        if self._closed or self._refreshing is not None:
            return
        if loop.time() - self._refreshed_at < _REFRESH_EVERY:
            return
        self._refreshing = loop.create_task(self._background_refresh())

    async def _background_refresh(self) -> None:
        try:
            with contextlib.suppress(ConnectionError, OSError, TimeoutError):
                await self.refresh()
        finally:
            self._refreshing = None

    # -- commands -----------------------------------------------------------------------

    async def call(
        self, encoded: list[bytes], slots: list[int], deadline: float, reload: bytes = b""
    ) -> list[Any]:
        """The replies to commands already in RESP, each sent to the master of its slot
        (``slots[i]`` for ``encoded[i]``), redirections followed, in order. A command a
        node answers NOSCRIPT is sent to it again behind ``reload`` (a SCRIPT LOAD), if
        given. Error replies come back as ``ReplyError`` values (the last one, if a
        command was redirected or retried ``_MAX_ROUNDS`` times). Raises TimeoutError
        past ``deadline`` (a ``loop.time()``), ConnectionError if a node's connection
        failed twice."""
        owners = self._owners
        by_node: dict[_redis_wire.Connection, list[int]] = {}
        for i, slot in enumerate(slots):
            owner = owners[slot]
            if owner is None:  # not opened yet, or a slot nobody serves
                await self._fresh_map(asyncio.get_running_loop().time(), deadline)
                if self._owners[slot] is None and self._unreachable:
                    raise ConnectionError(self._unreachable)
                return await self._follow(encoded, slots, deadline, reload, None)
            indices = by_node.get(owner)
            if indices is None:
                by_node[owner] = [i]
            else:
                indices.append(i)
        groups: list[_Group]
        if len(by_node) == 1:  # as every user-owned command is: no regrouping
            groups = [(next(iter(by_node)), list(range(len(encoded))), encoded, None)]
        else:
            groups = [
                (c, indices, [encoded[i] for i in indices], None) for c, indices in by_node.items()
            ]
        outcomes = await _gather(groups, deadline)
        for outcome in outcomes:
            if type(outcome) is not list or _ReplyError in map(type, outcome):
                # Maybe a redirection, a lost connection: the slow path from here.
                return await self._follow(encoded, slots, deadline, reload, (groups, outcomes))
        if len(groups) == 1:
            return outcomes[0]  # type: ignore[return-value]  # (a list: checked above)
        replies: list[Any] = [None] * len(encoded)
        for (_, indices, _, _), outcome in zip(groups, outcomes, strict=True):
            for i, reply in zip(indices, outcome, strict=True):  # type: ignore[arg-type]
                replies[i] = reply
        return replies

    async def _follow(
        self,
        encoded: list[bytes],
        slots: list[int],
        deadline: float,
        reload: bytes,
        first: tuple[list[_Group], list[list[Any] | BaseException]] | None,
    ) -> list[Any]:
        """``call`` from its first round's outcomes (if it got that far) on: every
        redirection and retry followed until the deadline."""
        loop = asyncio.get_running_loop()
        replies: list[Any] = [None] * len(encoded)
        route = [self._owners[slot] for slot in slots]
        if first is None:
            groups = _groups(encoded, range(len(encoded)), route, {}, replies)
        moved = [0] * len(encoded)
        lost_once = False
        for round_ in range(_MAX_ROUNDS):
            if first is not None:
                groups, outcomes = first
                first = None
            else:
                outcomes = await _gather(groups, deadline)
            answered_at = loop.time()
            pending: list[int] = []
            # What a command needs right before it when sent again, to the node in route:
            # the script (that node answered NOSCRIPT), ASKING (an ASK named the node).
            prefixes: dict[int, list[bytes]] = {}
            pause = lost = stale = False
            for (connection, indices, commands, at), outcome in zip(groups, outcomes, strict=True):
                if isinstance(outcome, TimeoutError):
                    self._refresh_soon()  # a node that stops answering may be failing over
                    raise outcome
                if isinstance(outcome, BaseException):  # ConnectionError, OSError
                    if lost_once:
                        self._refresh_soon()
                        raise outcome
                    lost = True
                    pending += indices
                    continue
                for k, i in enumerate(indices):
                    if at is None:  # (nothing sent before any of them)
                        start = position = k
                    else:
                        start, position = (at[k - 1] + 1 if k else 0), at[k]
                    # A SCRIPT LOAD or ASKING sent before it that failed is its answer.
                    failed = [r for r in outcome[start:position] if isinstance(r, _ReplyError)]
                    reply = replies[i] = failed[0] if failed else outcome[position]
                    if failed or type(reply) is not _ReplyError:
                        continue
                    kind, _, rest = str(reply).partition(" ")
                    if kind == "MOVED":  # the slot's owner from now on
                        slot, _, where = rest.partition(" ")
                        owner = self._node(where, connection)
                        moved[i] += 1
                        if owner is None or moved[i] > 1:  # nodes that disagree for now
                            pause = stale = True
                        if owner is not None:
                            self._owners[int(slot)] = owner
                        self._refresh_soon()
                    elif kind == "ASK":  # this once, that node
                        target = self._node(rest.partition(" ")[2], connection)
                        if target is None:
                            pause = stale = True
                        else:
                            route[i] = target
                            prefixes[i] = [_ASKING]
                    elif kind == "NOSCRIPT" and reload:  # a restart, a promoted replica
                        asked = position > 0 and commands[position - 1] is _ASKING
                        prefixes[i] = [reload, _ASKING] if asked else [reload]
                        route[i] = connection
                    elif kind in ("TRYAGAIN", "CLUSTERDOWN"):
                        pause = True
                        if kind == "CLUSTERDOWN":
                            self._refresh_soon()
                    else:  # the command's own answer
                        continue
                    pending.append(i)
            if not pending:
                return replies
            if pause and loop.time() < deadline:
                await asyncio.sleep(
                    min(_PAUSES[min(round_, len(_PAUSES) - 1)], deadline - loop.time())
                )
            if (lost or stale) and loop.time() < deadline:
                # The node may have gone away, or disagrees: send where the cluster says.
                lost_once = lost_once or lost
                await self._fresh_map(answered_at, deadline)
            if loop.time() >= deadline:  # nothing is sent past it
                raise TimeoutError
            for i in pending:
                if i not in prefixes:
                    route[i] = self._owners[slots[i]]
            groups = _groups(encoded, pending, route, prefixes, replies)
            if not groups:
                return replies
        return replies

    def _node(self, where: str, answered: _redis_wire.Connection) -> _redis_wire.Connection | None:
        """The node a redirection names, or None when it names none (``?:port``)."""
        address = _address(where, _of(answered))
        return None if address[0] == "?" else self.connection(address)

    async def _fresh_map(self, since: float, deadline: float) -> None:
        """Wait for a map read at or after ``since`` (a ``loop.time()``): the one being
        read, or a new one; concurrent callers share one read. A read that fails leaves
        the map as it was."""
        refreshing = self._refreshing
        if refreshing is None:
            if self._refreshed_at >= since or self._closed:
                return
            refreshing = self._refreshing = asyncio.get_running_loop().create_task(
                self._background_refresh()
            )
        async with asyncio.timeout_at(deadline):
            await asyncio.shield(refreshing)

    def close(self) -> None:
        """Drop every connection for good; commands in flight fail, later ones too."""
        self._closed = True
        if self._refreshing is not None:
            self._refreshing.cancel()
        for connection in self._connections.values():
            connection.close()


# A node, the commands' indices, what is sent there, and where each command's reply is
# among the replies (None: in order, nothing before them).
_Group = tuple[_redis_wire.Connection, list[int], list[bytes], list[int] | None]


def _groups(
    encoded: list[bytes],
    indices: Iterable[int],
    route: list[_redis_wire.Connection | None],
    prefixes: dict[int, list[bytes]],
    replies: list[Any],
) -> list[_Group]:
    """The commands per node, each right behind what it needs first; a command whose
    slot nobody serves gets that as its reply."""
    by_node: dict[int, tuple[_redis_wire.Connection, list[int], list[bytes], list[int]]] = {}
    for i in indices:
        connection = route[i]
        if connection is None:
            replies[i] = _redis_wire.ReplyError("CLUSTERDOWN the slot is not served")
            continue
        group = by_node.get(id(connection))
        if group is None:
            group = by_node[id(connection)] = (connection, [], [], [])
        group[1].append(i)
        group[2].extend(prefixes.get(i, ()))
        group[3].append(len(group[2]))
        group[2].append(encoded[i])
    return list(by_node.values())


async def _gather(groups: list[_Group], deadline: float) -> list[list[Any] | BaseException]:
    """Each group's replies, or what its connection raised; all groups are sent before
    any is awaited, so they take one round trip together."""
    waits: list[asyncio.Future[list[Any]]] = []
    for connection, _, commands, _ in groups:
        future = connection.send_now(commands, deadline)
        if future is None:  # connecting first
            future = asyncio.ensure_future(connection.call_encoded(commands, deadline))
        waits.append(future)
    outcomes: list[list[Any] | BaseException] = []
    try:
        for wait in waits:  # (all sent: awaiting one after the other costs no round trip)
            try:
                outcomes.append(await wait)
            except (ConnectionError, OSError, TimeoutError) as exc:
                outcomes.append(exc)
    except BaseException:  # cancelled: nothing is left waiting with nobody to read it
        for wait in waits:
            wait.cancel()
        raise
    return outcomes


def _of(connection: _redis_wire.Connection) -> Address:
    return (connection.host, connection.port)
