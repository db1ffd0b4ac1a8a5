"""``redis://``, ``rediss://`` and ``redis+cluster://``: state shared by many processes.

A record is a Redis hash with one field per property (see ``_redis_lua``); Lua scripts
compare stamps and do HSET/HDEL only, never decoding values. A user's record, their
per-conversation records, their deletion stamp and their index share one hash slot
(the hash tag is the user), so deleting a user is one atomic script even on a cluster.
Loading a turn's records is one pipelined round trip (one per node on a cluster). An
export walks the keys with SCAN (each primary in turn on a cluster): no index is kept
per record, so a turn writes nothing but its records.

A store made from a ``redis://`` or ``rediss://`` URL (without redis-py query options)
sends a turn's load and apply over one multiplexed connection of its own
(``_redis_wire``): the commands of concurrent turns share writes and round trips; one
made from a ``redis+cluster://`` URL does the same over one such connection per master
(``_redis_cluster``), following the cluster's redirections. A turn's commands are safe
to repeat (reads and PEXPIRE; stamped scripts), so a command that lost its connection
is sent once more, on a new connection, within the timeout; nothing else is retried. Everything else, and a store on a caller's client, uses redis-py.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisClusterException, RedisError
from redis.maint_notifications import MaintNotificationsConfig

from .._change import Change
from .._clock import MAX_NODES, HybridClock, stamp_ms
from .._codec import encode_name, value_size
from .._errors import (
    InvalidCursor,
    PreconditionFailed,
    RecordTooLarge,
    StoreUnavailable,
)
from .._keys import (
    RecordKey,
    UserRef,
    decode_key,
    escape_part,
    listing_prefix,
    namespace_prefix,
    sorted_channels,
)
from .._message import Kind
from . import _redis_cluster, _redis_lua, _redis_wire
from ._base import (
    DEFAULT_TOMBSTONE_TTL,
    MISSING,
    NODE_LEASE_SECONDS,
    ApplyResult,
    DumpedRecord,
    DumpPage,
    ExportPage,
    InspectedRecord,
    KeyPage,
    Store,
    StoredRecord,
)
from ._record import Record

__all__ = ["RedisStore"]

T = TypeVar("T")
Client = Redis | RedisCluster
_RESULTS = {
    b"applied": ApplyResult.APPLIED,
    b"stale": ApplyResult.STALE,
    b"dropped": ApplyResult.DROPPED,
    b"too_large": ApplyResult.TOO_LARGE,
}
_OUR_QUERY = ("prefix", "timeout")
_SPELLINGS_KEPT = 4096


class _Spelled(NamedTuple):
    """A record's Redis keys, and its load's commands already in RESP."""

    keys: list[str]  # the record, then for a user's records their deletion stamp, index
    hgetall: bytes
    get_deleted: bytes  # b"" for a conversation record
    evalsha: bytes  # EVALSHA, the script, the keys: the array without its header
    slot: int  # the keys' hash slot, on a cluster (else 0)


_HEAD, _TEXT = _redis_lua.HEAD, _redis_lua.TEXT


def _member_len(name: str, value: bytes) -> int:
    return len(encode_name(name)) + 1 + value_size(value)


class RedisStore(Store):
    """Records in Redis or a Redis Cluster, for bots running as several processes.

    Pass a ready ``redis.asyncio.Redis`` or ``RedisCluster`` client (you keep owning
    it), or use ``RedisStore.from_url`` / ``open_store(url)``, which create one with
    explicit timeouts and a retry budget of one. ``timeout`` bounds every operation:
    past it, or when Redis is unreachable, callers get StoreUnavailable.
    """

    def __init__(
        self,
        client: Client,
        *,
        prefix: str = "inline_state",
        timeout: float = 1.0,
        owns_client: bool = False,
        wire: _redis_wire.Connection | _redis_cluster.Cluster | None = None,
        clock: HybridClock | None = None,
        ttl: Mapping[Kind, float] | None = None,
        tombstone_ttl: float = DEFAULT_TOMBSTONE_TTL,
    ) -> None:
        super().__init__(clock=clock, ttl=ttl, tombstone_ttl=tombstone_ttl)
        if not isinstance(client, (Redis, RedisCluster)):
            raise TypeError(f"expected a redis.asyncio Redis or RedisCluster, got {client!r}")
        if "{" in prefix or "}" in prefix:
            raise ValueError("the key prefix must not contain '{' or '}' (hash tags)")
        self.client = client
        self.prefix = prefix
        self.timeout = timeout
        self._owns_client = owns_client
        self._wire = wire
        self._routed = isinstance(wire, _redis_cluster.Cluster)  # commands go by hash slot
        self._cluster = isinstance(client, RedisCluster)
        self._apply = client.register_script(_redis_lua.APPLY)
        self._cas = client.register_script(_redis_lua.COMPARE_AND_SET)
        self._delete_user = client.register_script(_redis_lua.DELETE_USER)
        self._restore = client.register_script(_redis_lua.RESTORE)
        self._restore_deletion = client.register_script(_redis_lua.RESTORE_DELETION)
        self._renew_node = client.register_script(_RENEW_NODE)
        self._release_node = client.register_script(_RELEASE_NODE)
        self._holder = uuid.uuid4().hex  # whose node id leases these are
        self._evalsha = _redis_wire.bulk("EVALSHA") + _redis_wire.bulk(self._apply.sha)
        # A turn's keys are spelled for its load and again for its apply.
        self._spellings: dict[RecordKey, _Spelled] = {}

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisStore:
        """A store on a new client for ``redis://``, ``rediss://`` or ``redis+cluster://``.

        URL query options of ours: ``prefix`` and ``timeout`` (seconds); the rest goes
        to redis-py. Credentials go in the URL: ``redis://user:password@host:6379/0``.
        """
        parts = urlsplit(url)
        query = parse_qsl(parts.query)
        for name, value in query:
            if name == "prefix":
                options.setdefault("prefix", value)
            elif name == "timeout":
                options.setdefault("timeout", float(value))
        rest = urlencode([(k, v) for k, v in query if k not in _OUR_QUERY])
        timeout = float(options.get("timeout", 1.0))
        common: dict[str, Any] = {
            # Every operation is bounded by ``timeout`` as a whole (see _guard); a socket
            # timeout too would arm two more timers per command for nothing.
            "socket_timeout": None,
            "socket_connect_timeout": timeout,
            "retry": Retry(NoBackoff(), 1),
        }
        client: Client
        if parts.scheme == "redis+cluster":
            if not parts.hostname:
                raise ValueError(f"expected redis+cluster://host:port, got {url!r}")
            if not rest:  # the turn's commands over connections of our own, by hash slot
                options.setdefault(
                    "wire",
                    _redis_cluster.Cluster(
                        [(parts.hostname, parts.port or 6379)],
                        username=unquote(parts.username) if parts.username else None,
                        password=unquote(parts.password) if parts.password else None,
                        timeout=timeout,
                    ),
                )
            client = RedisCluster(
                host=parts.hostname,
                port=parts.port or 6379,
                username=unquote(parts.username) if parts.username else None,
                password=unquote(parts.password) if parts.password else None,
                # Maintenance notifications are a Redis Enterprise/Cloud feature; on
                # open-source Redis the handshake only fails and logs.
                maint_notifications_config=MaintNotificationsConfig(enabled=False),
                **common,
            )
        elif parts.scheme in ("redis", "rediss"):
            client = Redis.from_url(urlunsplit(parts._replace(query=rest)), **common)
            if not rest:  # the turn's commands over a connection of our own
                kwargs = client.connection_pool.connection_kwargs
                options.setdefault(
                    "wire",
                    _redis_wire.Connection(
                        kwargs.get("host", "localhost"),
                        int(kwargs.get("port", 6379)),
                        username=kwargs.get("username"),
                        password=kwargs.get("password"),
                        db=int(kwargs.get("db", 0)),
                        ssl_context=ssl.create_default_context()
                        if parts.scheme == "rediss"
                        else None,
                        timeout=timeout,
                    ),
                )
        else:
            raise ValueError(f"not a Redis URL: {url!r}")
        return cls(client, owns_client=True, **options)

    async def open(self) -> None:
        """Discover a cluster's slots before the first turn (a no-op on one Redis).

        Concurrent first commands on a cold cluster client each race to discover the
        cluster and tear each other's connections down.
        """
        if isinstance(self.client, RedisCluster):
            await self._guard(self.client.initialize())
        if isinstance(self._wire, _redis_cluster.Cluster):
            await self._guard(self._wire.refresh())
        await self._start_clock()

    async def close(self) -> None:
        """Give the clock's node id back; close the client if this store created it."""
        try:
            await self._stop_clock()
        finally:
            if self._wire is not None:
                self._wire.close()
            if self._owns_client:
                await self.client.aclose()

    async def _guard(self, operation: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self.timeout):
                return await operation
        except TimeoutError:
            raise StoreUnavailable(f"Redis did not answer within {self.timeout} s") from None
        except (RedisError, RedisClusterException, OSError) as exc:
            raise StoreUnavailable(f"Redis: {exc}") from exc

    # -- keys ---------------------------------------------------------------------------

    def _user_tag(self, user: UserRef) -> str:
        return self._tag(user.encode())

    def _tag(self, encoded: str) -> str:
        """The key part every Redis key of one owner (a user or a conversation) starts
        with: the prefix and the owner's hash tag."""
        return f"{self.prefix}:{{{encoded}}}"

    def _record_key(self, key: RecordKey) -> str:
        return self._spelled(key).keys[0]

    def _script_keys(self, key: RecordKey) -> list[str]:
        """The record, then (for user-owned records) the deletion stamp and the index."""
        return self._spelled(key).keys

    def _spelled(self, key: RecordKey) -> _Spelled:
        spelled = self._spellings.get(key)
        if spelled is None:
            if len(self._spellings) >= _SPELLINGS_KEPT:
                self._spellings.clear()
            spelled = self._spellings[key] = self._spell(key)
        return spelled

    def _spell(self, key: RecordKey) -> _Spelled:
        # Every user-owned key shares the owner's tag: the encoding of their user record's
        # key. Escaped ids hold no "/", so the encoding splits back into its parts.
        encoded = key.encode()
        if key.kind == "conversation":
            keys = [f"{self._tag(encoded)}:r"]
        elif key.kind == "user":
            tag = self._tag(encoded)
            keys = [f"{tag}:r", f"{tag}:d"]
        else:
            namespace, _, user, conversation = encoded.rsplit("/", 3)
            tag = self._tag(f"{namespace}/u/{user}")
            keys = [f"{tag}:p/{conversation}", f"{tag}:d", f"{tag}:i"]
        bulks = [_redis_wire.bulk(k) for k in keys]
        return _Spelled(
            keys,
            b"*2\r\n$7\r\nHGETALL\r\n" + bulks[0],
            b"*2\r\n$3\r\nGET\r\n" + bulks[1] if len(keys) > 1 else b"",
            b"".join([self._evalsha, _redis_wire.bulk(str(len(keys))), *bulks]),
            _redis_cluster.key_slot(keys[0].encode("utf-8", "surrogatepass"))
            if self._routed
            else 0,
        )

    # -- operations -----------------------------------------------------------------------

    def _node_key(self, node_id: int) -> str:
        return f"{self.prefix}:node:{node_id}"

    async def allocate_node_id(self) -> int:
        """A node id no live lease holds (``SET NX`` with an expiry), leased to this
        instance; a counter spreads where processes start looking."""
        start = int(await self._guard(self.client.incr(f"{self.prefix}:nodes")))
        lease_ms = int(NODE_LEASE_SECONDS * 1000)
        for i in range(MAX_NODES - 1):
            node = (start + i) % (MAX_NODES - 1) + 1
            taken = await self._guard(
                self.client.set(self._node_key(node), self._holder, nx=True, px=lease_ms)
            )
            if taken:
                return node
        raise StoreUnavailable(f"all {MAX_NODES - 1} clock node ids under {self.prefix!r} are held")

    async def renew_node_id(self, node_id: int) -> bool:
        """Extend this instance's lease (or take the node id back if it lapsed unused);
        False if another writer holds it."""
        lease_ms = int(NODE_LEASE_SECONDS * 1000)
        reply = await self._guard(
            self._renew_node(keys=[self._node_key(node_id)], args=[self._holder, lease_ms])
        )
        return bool(reply)

    async def release_node_id(self, node_id: int) -> None:
        """End this instance's lease on a node id."""
        await self._guard(self._release_node(keys=[self._node_key(node_id)], args=[self._holder]))

    async def _call_wire(
        self,
        wire: _redis_wire.Connection | _redis_cluster.Cluster,
        encoded: list[bytes],
        slots: list[int],
        deadline: float,
    ) -> list[Any]:
        """The commands' replies over the multiplexed connection (on a cluster, each
        command to its slot's master), sent once more on a new connection if the first
        one failed (callers send only repeatable commands), both before ``deadline`` (a
        ``loop.time()``)."""
        try:
            if isinstance(wire, _redis_cluster.Cluster):  # (NOSCRIPT: loaded on that node)
                return await wire.call(encoded, slots, deadline, _LOAD_APPLY)
            try:
                return await wire.call_encoded(encoded, deadline)
            except ConnectionError:
                if asyncio.get_running_loop().time() >= deadline:
                    raise TimeoutError from None
                return await wire.call_encoded(encoded, deadline)
        except TimeoutError:
            raise StoreUnavailable(f"Redis did not answer within {self.timeout} s") from None
        except OSError as exc:
            raise StoreUnavailable(f"Redis: {exc}") from None

    async def load(self, keys: Sequence[RecordKey]) -> list[StoredRecord]:
        """Read records (and refresh TTLs) in one pipelined round trip per node."""
        if self._wire is not None:
            return await self._load_wire(self._wire, keys)
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            script_keys = self._script_keys(key)
            pipe.hgetall(script_keys[0])
            if len(script_keys) > 1:
                pipe.get(script_keys[1])
            ttl = self.ttl_ms.get(key.kind)
            if ttl is not None:
                pipe.pexpire(script_keys[0], ttl)
        replies = iter(await self._guard(pipe.execute()))
        out: list[StoredRecord] = []
        for key in keys:
            fields: dict[bytes, bytes] = next(replies)
            deleted = int(next(replies) or 0) if key.kind != "conversation" else 0
            if key.kind in self.ttl_ms:
                next(replies)
            out.append(_view([part for field in fields.items() for part in field], deleted))
        return out

    async def _load_wire(
        self, wire: _redis_wire.Connection | _redis_cluster.Cluster, keys: Sequence[RecordKey]
    ) -> list[StoredRecord]:
        # One GET per owner's deletion stamp, however many of their records are read.
        encoded: list[bytes] = []
        slots: list[int] = []
        stamps: dict[str, int] = {}
        where: list[tuple[int, int]] = []
        ttl_ms = self.ttl_ms
        for key in keys:
            spelled = self._spelled(key)
            at = len(encoded)
            encoded.append(spelled.hgetall)
            stamp_at = -1
            if spelled.get_deleted:
                deleted = spelled.keys[1]
                stamp_at = stamps.get(deleted, -1)
                if stamp_at < 0:
                    stamp_at = stamps[deleted] = len(encoded)
                    encoded.append(spelled.get_deleted)
            ttl = ttl_ms.get(key.kind)
            if ttl is not None:
                encoded.append(_redis_wire.encode(("PEXPIRE", spelled.keys[0], ttl)))
            slots += [spelled.slot] * (len(encoded) - len(slots))
            where.append((at, stamp_at))
        deadline = asyncio.get_running_loop().time() + self.timeout
        replies = _checked(await self._call_wire(wire, encoded, slots, deadline))
        return [
            _view(replies[at], int(replies[stamp_at] or 0) if stamp_at >= 0 else 0)
            for at, stamp_at in where
        ]

    def _apply_args(self, change: Change, now_ms: int) -> list[Any]:
        args: list[Any] = [
            change.stamp,
            change.base,
            1 if change.replace else 0,
            change.max_bytes,
            self.ttl_ms.get(change.key.kind, 0),
            self.tombstone_ttl_ms,
            len(change.sets),
            now_ms,
        ]
        for name, value in change.sets.items():
            args += (name.encode(), value, _member_len(name, value))
        args += [name.encode() for name in change.removes]
        return args

    async def apply(self, changes: Sequence[Change]) -> list[ApplyResult]:
        """Apply each change atomically to its record (one script per record)."""
        now_ms = self.clock.wall_ms()
        if self._wire is not None:
            replies = await self._apply_wire(self._wire, changes, now_ms)
        elif self._cluster:
            # Scripts cannot join a cluster pipeline; run them side by side instead.
            calls = [
                self._apply(keys=self._script_keys(c.key), args=self._apply_args(c, now_ms))
                for c in changes
            ]
            replies = await self._guard(asyncio.gather(*calls))
        else:
            replies = await self._guard(self._apply_pipelined(changes, now_ms))
        return [_RESULTS[reply] for reply in replies]

    async def _apply_wire(
        self,
        wire: _redis_wire.Connection | _redis_cluster.Cluster,
        changes: Sequence[Change],
        now_ms: int,
    ) -> list[Any]:
        encoded: list[bytes] = []
        slots: list[int] = []
        for c in changes:
            spelled = self._spelled(c.key)
            args = self._apply_args(c, now_ms)
            count = 3 + len(spelled.keys) + len(args)
            encoded.append(b"*%d\r\n%s%s" % (count, spelled.evalsha, _redis_wire.bulks(args)))
            slots.append(spelled.slot)
        deadline = asyncio.get_running_loop().time() + self.timeout  # every step within it
        replies = await self._call_wire(wire, encoded, slots, deadline)
        if not self._routed and any(_no_script(r) for r in replies):  # a restart, SCRIPT FLUSH
            _checked(await self._call_wire(wire, [_LOAD_APPLY], [0], deadline))
            replies = await self._call_wire(wire, encoded, slots, deadline)  # stamped: repeatable
        return _checked(replies)

    async def _apply_pipelined(self, changes: Sequence[Change], now_ms: int) -> list[Any]:
        # EVALSHA straight into the pipeline: a script registered on a pipeline makes
        # redis-py send SCRIPT EXISTS first, an extra round trip on every turn. If Redis
        # lost the script (a restart, SCRIPT FLUSH), load it and run the pipeline again:
        # stamped writes are safe to repeat.
        for attempt in (1, 2):
            pipe = self.client.pipeline(transaction=False)
            for c in changes:
                script_keys = self._script_keys(c.key)
                pipe.evalsha(
                    self._apply.sha, len(script_keys), *script_keys, *self._apply_args(c, now_ms)
                )
            try:
                replies: list[Any] = await pipe.execute()
                return replies
            except NoScriptError:
                if attempt == 2:
                    raise
                await self.client.script_load(_redis_lua.APPLY)
        raise AssertionError("unreachable")

    async def compare_and_set(
        self,
        key: RecordKey,
        data: Mapping[str, bytes] | str | None,
        etag: str | None,
        *,
        max_bytes: int,
    ) -> str:
        """Replace a whole record if ``etag`` allows it; return the new eTag."""
        stamp = self.clock.stamp()
        args: list[Any] = [
            etag or "",
            stamp,
            max_bytes,
            self.ttl_ms.get(key.kind, 0),
            self.tombstone_ttl_ms,
        ]
        if data is None:
            args.append("none")
        elif isinstance(data, str):
            text = data.encode("utf-8", "surrogatepass")
            args += ("text", text, len(text) + 2)
        else:
            args.append("props")
            for name, value in data.items():
                args += (name.encode(), value, _member_len(name, value))
        reply = await self._guard(self._cas(keys=self._script_keys(key), args=args))
        outcome: bytes = reply[0]
        detail: str = reply[1].decode()
        if outcome == b"ok":  # the script may have raised the stamp: never issue it again
            self.clock.observe(int(reply[2]))
        if outcome == b"conflict":
            raise PreconditionFailed(detail)
        if outcome == b"too_large":
            raise RecordTooLarge(key, int(detail), max_bytes)
        return detail

    async def delete_user(self, user: UserRef, stamp: int) -> int:
        """Delete a user's record and per-conversation records; return the deletion stamp."""
        tag = self._user_tag(user)
        reply: bytes = await self._guard(
            self._delete_user(keys=[f"{tag}:r", f"{tag}:d", f"{tag}:i"], args=[stamp])
        )
        return int(reply)

    async def export(
        self, bot: str, channel: str | None, *, cursor: str | None = None, limit: int = 100
    ) -> ExportPage:
        """A page of live records, found by walking the keys with SCAN (each primary of a
        cluster in turn; the work per page is bounded, so a page may be short or empty
        before the export is done).

        A record that exists for the whole export is in exactly one page, unless Redis
        shrinks its key table meanwhile (after most keys were deleted) or, on a cluster,
        its slot moves to another primary or the primaries change (a failover renames
        one, and the cursor counts primaries in name order): then records can be
        repeated or missed. Records written during the export may or may not be in it.
        """
        if limit <= 0:
            raise ValueError("limit must be positive")
        pattern = _glob_escape(f"{self.prefix}:{{{namespace_prefix(bot, channel)}") + "*"
        page, token = await self._scan_page(pattern, bot, channel, cursor, limit, None)
        records = await self.load(page) if page else []
        return ExportPage([(k, r) for k, r in zip(page, records, strict=True) if r.exists], token)

    async def _scan_page(
        self,
        pattern: str,
        bot: str,
        channel: str | None,
        cursor: str | None,
        limit: int,
        wanted: Callable[[RecordKey], bool] | None,
        listing: str | None = None,
    ) -> tuple[list[RecordKey], str | None]:
        """Up to ``limit`` records whose keys match ``pattern`` (and ``wanted``), found
        by a bounded number of SCAN steps after ``cursor``, and the cursor after them
        (naming ``listing``, when given, so that it continues only that listing)."""
        node, position, found = _export_position(bot, channel, cursor, listing)
        if wanted is not None and not all(wanted(key) for key in found):
            raise InvalidCursor("the cursor belongs to another listing")
        nodes = self._scan_nodes()
        for _ in range(_SCANS_PER_PAGE):
            if len(found) >= limit or node >= len(nodes):
                break
            count = min(limit, _SCAN_COUNT)  # what a cursor carries stays near this
            position, names = await self._scan(nodes[node], position, pattern, count)
            found += [
                key
                for name in names
                if (key := self._record_of(name)) is not None and (wanted is None or wanted(key))
            ]
            if position == 0:
                node += 1
        page, rest = found[:limit], found[limit:]
        token = None
        if node < len(nodes) or rest:
            state: list[Any] = [node, position, [key.encode() for key in rest]]
            token = json.dumps(state if listing is None else [*state, listing])
        return page, token

    def _scan_nodes(self) -> list[Any]:
        if isinstance(self.client, RedisCluster):
            return sorted(self.client.get_primaries(), key=lambda n: str(n.name))
        return [None]

    async def _scan(
        self, node: Any, position: int, pattern: str, count: int, of_type: str | None = "HASH"
    ) -> tuple[int, list[Any]]:
        scan: Any = self.client.scan
        if node is None:
            plain: tuple[int, list[Any]] = await self._guard(
                scan(position, match=pattern, count=count, _type=of_type)
            )
            return plain
        # With target_nodes, redis-py answers ({node name: cursor}, keys).
        cursors, names = await self._guard(
            scan(position, match=pattern, count=count, _type=of_type, target_nodes=node)
        )
        return int(next(iter(cursors.values()))), names

    def _record_of(self, name: Any) -> RecordKey | None:
        """The record a key found by SCAN holds, or None for a key that is not a record."""
        try:
            text = name.decode()
            tag, _, suffix = text[len(self.prefix) + 2 :].partition("}")
            if suffix == ":r":
                return decode_key(tag)
            if suffix.startswith(":p/"):
                namespace, letter, user = tag.rsplit("/", 2)
                if letter == "u":
                    return decode_key(f"{namespace}/p/{user}/{suffix[3:]}")
        except (ValueError, KeyError, IndexError):  # UnicodeDecodeError is a ValueError
            pass
        return None

    # -- inspecting -------------------------------------------------------------------------

    async def _peek(self, keys: Sequence[RecordKey]) -> list[StoredRecord]:
        """Records as stored, in one pipeline, their expiry left alone."""
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(self._record_key(key))
        replies = await self._guard(pipe.execute())
        return [_view([part for item in fields.items() for part in item], 0) for fields in replies]

    async def channels(self, bot: str) -> list[str | None]:
        """The channels on which ``bot`` has records (None first). Redis keeps no index
        of them: this walks every key of the bot with SCAN (1,000 per step, on each
        primary of a cluster), checking the records of channels not yet seen."""
        pattern = _glob_escape(f"{self.prefix}:{{") + f"v[13]/{_glob_escape(escape_part(bot))}/*"
        seen: set[str | None] = set()
        for node in self._scan_nodes():
            position = None
            while position != 0:
                position, names = await self._scan(node, position or 0, pattern, _SCAN_COUNT)
                unseen = [
                    key
                    for name in names
                    if (key := self._record_of(name)) is not None
                    and key.bot == bot
                    and key.channel not in seen
                ]
                if unseen:
                    for key, record in zip(unseen, await self._peek(unseen), strict=True):
                        if record.exists:
                            seen.add(key.channel)
        return sorted_channels(seen)

    async def list_keys(
        self,
        bot: str,
        channel: str | None,
        kind: Kind,
        *,
        prefix: str = "",
        cursor: str | None = None,
        limit: int = 50,
    ) -> KeyPage:
        """A page of keys found by a bounded number of SCAN steps (each page sorted, the
        pages in SCAN's order); a page may be short or empty before the listing ends."""
        if limit <= 0:
            raise ValueError("limit must be positive")
        # Private records live under their user's tag: {.../u/<user>}:p/<conversation>.
        start = listing_prefix(
            bot, channel, "conversation" if kind == "conversation" else "user", prefix
        )
        pattern = _glob_escape(f"{self.prefix}:{{{start}") + "*"
        first = escape_part(prefix)

        def wanted(key: RecordKey) -> bool:
            leading = key.conversation if kind == "conversation" else key.user
            return key.kind == kind and escape_part(leading).startswith(first)

        listing = json.dumps([bot, channel, kind, prefix])
        page, token = await self._scan_page(pattern, bot, channel, cursor, limit, wanted, listing)
        page.sort(key=RecordKey.encode)
        records = await self._peek(page) if page else []
        return KeyPage([k for k, r in zip(page, records, strict=True) if r.exists], token)

    async def inspect(self, key: RecordKey) -> InspectedRecord:
        """One record and each live property's stamp (HGETALL, and the owner's deletion
        stamp; the expiry is left alone)."""
        script_keys = self._script_keys(key)
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(script_keys[0])
        if len(script_keys) > 1:
            pipe.get(script_keys[1])
        replies = await self._guard(pipe.execute())
        flat = [part for item in replies[0].items() for part in item]
        record = _view(flat, int(replies[1] or 0) if len(replies) > 1 else 0)
        if not record.exists:
            return InspectedRecord(MISSING, {})
        return InspectedRecord(record, _stamps(flat, record.props))

    # -- dumps ------------------------------------------------------------------------------

    async def dump(self, *, cursor: str | None = None, limit: int = 100) -> DumpPage:
        """Records and deletion stamps as SCAN finds them under the prefix (each primary
        of a cluster in turn), with their expiry; a page holds what a bounded number of
        SCAN steps found, about ``limit``. As with ``export``, a key table that shrinks
        or a slot that moves meanwhile can repeat or miss records; a restore of a
        repeated one changes nothing."""
        if limit <= 0:
            raise ValueError("limit must be positive")
        node, position = _dump_position(cursor)
        nodes = self._scan_nodes()
        pattern = _glob_escape(f"{self.prefix}:{{") + "*"
        names: list[Any] = []
        for _ in range(_SCANS_PER_PAGE):
            if len(names) >= limit or node >= len(nodes):
                break
            position, found = await self._scan(
                nodes[node], position, pattern, min(limit, _SCAN_COUNT), None
            )
            names += found
            if position == 0:
                node += 1
        keys = [key for name in names if (key := self._record_of(name)) is not None]
        users = [user for name in names if (user := self._deleted_user_of(name)) is not None]
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(self._record_key(key))
            pipe.pttl(self._record_key(key))
        for user in users:
            pipe.get(f"{self._user_tag(user)}:d")
        replies = iter(await self._guard(pipe.execute()) if keys or users else [])
        now_ms = self.clock.wall_ms()
        records: list[DumpedRecord] = []
        for key in keys:
            fields, pttl = next(replies), next(replies)
            rec = _record_of_hash(key, fields)
            if rec is not None:
                records.append(rec.dumped(key, now_ms + pttl if pttl > 0 else 0))
        deletions = [(user, int(stamp)) for user in users if (stamp := next(replies))]
        after = json.dumps([node, position]) if node < len(nodes) else None
        return DumpPage(records, deletions, after)

    def _deleted_user_of(self, name: Any) -> UserRef | None:
        """The user whose deletion stamp a key found by SCAN holds, or None."""
        try:
            tag, _, suffix = name.decode()[len(self.prefix) + 2 :].partition("}")
            return decode_key(tag).owner if suffix == ":d" else None
        except (ValueError, KeyError, IndexError):
            return None

    async def restore(
        self,
        records: Sequence[DumpedRecord],
        deletions: Sequence[tuple[UserRef, int]] = (),
        *,
        reseal: bool = False,
    ) -> int:
        """Merge dumped records in (see ``Store.restore``): each is read, merged in
        Python, and written whole by a script that checks its head is still the one
        read (any accepted write changes it); a record that changed meanwhile is
        merged again."""
        changed = 0
        if deletions and not reseal:
            for user, stamp in deletions:
                tag = self._user_tag(user)
                raised = await self._guard(
                    self._restore_deletion(keys=[f"{tag}:d", f"{tag}:i"], args=[stamp])
                )
                # The user's data below the stamp goes, as delete_user would take it; what
                # was written here after it stays.
                for name in raised or ():
                    key = self._record_of(name)
                    if key is not None:
                        cleared = DumpedRecord(key, 0, 0, int(stamp), {}, {})
                        changed += await self._restore_one(cleared, False, existing=True)
        for dumped in records:
            changed += await self._restore_one(dumped, reseal)
        return changed

    async def _restore_one(
        self, dumped: DumpedRecord, reseal: bool, *, existing: bool = False
    ) -> int:
        key = dumped.key
        script_keys = self._script_keys(key)
        for _ in range(_RESTORE_ATTEMPTS):
            pipe = self.client.pipeline(transaction=False)
            pipe.hgetall(script_keys[0])
            if len(script_keys) > 1:
                pipe.get(script_keys[1])
            replies = await self._guard(pipe.execute())
            fields: dict[bytes, bytes] = replies[0]
            deleted_text = replies[1] if len(replies) > 1 else None
            deleted = int(deleted_text or 0)
            rec = _record_of_hash(key, fields)
            if rec is None:
                if reseal or existing:
                    return 0
                rec = Record()
            if not rec.merge(dumped, deleted, reseal=reseal):
                return 0
            # The expiry: a reseal keeps it; a record new here takes the dumped one (as
            # time left: the two stores' clocks may differ); else this store's rule.
            ttl = self.ttl_ms.get(key.kind, 0)
            if reseal:
                expiry = -1
            elif not fields and dumped.expires_ms:
                expiry = max(1, dumped.expires_ms - self.clock.wall_ms())
            else:
                expiry = ttl if rec.live else max(ttl, self.tombstone_ttl_ms)
            args: list[Any] = [
                fields.get(_HEAD, b""),
                deleted_text or b"",
                expiry,
                int(rec.live),
                *_hash_of(rec),
            ]
            written = await self._guard(self._restore(keys=script_keys, args=args))
            if written:
                return 1
        raise StoreUnavailable(
            f"a restored {key.kind} record kept changing under {_RESTORE_ATTEMPTS} merges"
        )


_SCANS_PER_PAGE = 64
_SCAN_COUNT = 1000
_CURSOR_CHARS = 1 << 20
_PENDING_KEPT = 10_000  # keys found by one SCAN beyond a page: at most a few in practice
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


def _glob_escape(text: str) -> str:
    return _GLOB_SPECIAL.sub(r"\\\1", text)


def _export_position(
    bot: str, channel: str | None, cursor: str | None, listing: str | None = None
) -> tuple[int, int, list[RecordKey]]:
    """Where an export goes on: the node, its SCAN cursor, and keys found but not yet
    returned. A cursor is input from the network: anything else is refused."""
    if cursor is None:
        return 0, 0, []
    if len(cursor) > _CURSOR_CHARS:
        raise InvalidCursor("not an export cursor this store issued (too long)")
    try:
        node, position, pending, *given = json.loads(cursor)
        if given != ([] if listing is None else [listing]):
            raise ValueError
        if (
            type(node) is not int
            or type(position) is not int
            or not (0 <= node < 1 << 16 and 0 <= position < 1 << 64)  # SCAN's cursor: 64 bits
            or type(pending) is not list
            or len(pending) > _PENDING_KEPT
            or not all(type(encoded) is str for encoded in pending)
        ):
            raise ValueError
        keys = [decode_key(encoded) for encoded in pending]
    except (ValueError, TypeError, KeyError, IndexError, RecursionError):  # deep nesting
        raise InvalidCursor("not an export cursor this store issued") from None
    if any(key.bot != bot or key.channel != channel for key in keys):
        raise InvalidCursor("the export cursor belongs to another bot or channel")
    return node, position, keys


_RENEW_NODE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if not holder then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]); return 1 end
return 0
"""
_RELEASE_NODE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


_LOAD_APPLY = _redis_wire.encode(("SCRIPT", "LOAD", _redis_lua.APPLY))


def _no_script(reply: Any) -> bool:
    return isinstance(reply, _redis_wire.ReplyError) and str(reply).startswith("NOSCRIPT")


def _checked(replies: list[Any]) -> list[Any]:
    """The replies, or StoreUnavailable naming the first error reply."""
    for reply in replies:
        if isinstance(reply, _redis_wire.ReplyError):
            raise StoreUnavailable(f"Redis: {reply}")
    return replies


def _view(flat: list[bytes], deleted: int) -> StoredRecord:
    """A record from its hash fields as HGETALL lists them, of either layout (see
    ``_redis_lua``)."""
    if not flat:
        return StoredRecord(deleted=deleted) if deleted else MISSING
    props: dict[str, bytes] = {}
    newest = observed = text_stamp = 0
    head = text = None
    for i in range(0, len(flat), 2):
        name, value = flat[i], flat[i + 1]
        if name == _HEAD:
            head = value
            continue
        stamp = int.from_bytes(value[:8])
        if name == _TEXT:
            text_stamp, text = stamp, value[8:]
            continue
        if stamp > observed:
            observed = stamp
        if len(value) > 8:
            props[name.decode()] = value[8:]
            if stamp > newest:
                newest = stamp
    if head is None:
        return _view_layout_1(dict(zip(flat[::2], flat[1::2], strict=True)), deleted)
    parts = head.split(b",")
    etag = parts[1]
    observed = max(observed, int(parts[3]) if len(parts) > 3 else 0, text_stamp)
    if not props and text is None:
        return StoredRecord(observed=observed, deleted=deleted)
    return StoredRecord(
        props=props,
        text=text.decode("utf-8", "surrogatepass") if text is not None else None,
        etag=etag.decode(),
        observed=observed,
        deleted=deleted,
        modified_ms=stamp_ms(newest if props else text_stamp),
    )


def _stamps(flat: list[bytes], props: Mapping[str, bytes]) -> dict[str, int]:
    """The stamp of each live property, from the hash fields as HGETALL lists them."""
    fields = dict(zip(flat[::2], flat[1::2], strict=True))
    if _HEAD in fields:
        return {name: int.from_bytes(fields[name.encode()][:8]) for name in props}
    return {name: int(fields[b"s:" + name.encode()]) for name in props}


def _view_layout_1(fields: Mapping[bytes, bytes], deleted: int) -> StoredRecord:
    props: dict[str, bytes] = {}
    stamps: dict[bytes, int] = {}
    for name, value in fields.items():
        if name[:2] == b"v:":
            props[name[2:].decode()] = value
        elif name[:2] == b"s:":
            stamps[name[2:]] = int(value)
    text = fields.get(b"text")
    text_stamp = int(fields.get(b"ts", 0))
    observed = max([int(fields.get(b"clear", 0)), text_stamp, *stamps.values()])
    if not props and text is None:
        return StoredRecord(observed=observed, deleted=deleted)
    newest = max([stamps[n.encode()] for n in props] or [text_stamp])
    return StoredRecord(
        props=props,
        text=text.decode("utf-8", "surrogatepass") if text is not None else None,
        etag=fields[b"e"].decode(),
        observed=observed,
        deleted=deleted,
        modified_ms=stamp_ms(newest),
    )


_RESTORE_ATTEMPTS = 16


def _dump_position(cursor: str | None) -> tuple[int, int]:
    if cursor is None:
        return 0, 0
    try:
        node, position = json.loads(cursor)
        valid = type(node) is int and type(position) is int
        valid = valid and 0 <= node < 1 << 16 and 0 <= position < 1 << 64
    except (ValueError, TypeError, RecursionError):
        valid = False
    if not valid:
        raise InvalidCursor("not a dump cursor this store gave")
    return node, position


def _record_of_hash(key: RecordKey, fields: Mapping[bytes, bytes]) -> Record | None:
    """A record from its hash fields (layout 2), None when there is none; a record still
    in layout 1 is an error naming what rewrites it."""
    if not fields:
        return None
    head = fields.get(_HEAD)
    if head is None:
        return _record_of_layout_1(fields)
    parts = head.split(b",")
    etag = parts[1].decode()
    created, _, writes = etag.partition(".")
    clear = int(parts[3]) if len(parts) > 3 else 0
    text, text_stamp = None, 0
    rows: list[tuple[str, bytes | None, int]] = []
    for name, value in fields.items():
        if name == _HEAD:
            continue
        stamp = int.from_bytes(value[:8])
        if name == _TEXT:
            text, text_stamp = value[8:].decode("utf-8", "surrogatepass"), stamp
        else:
            rows.append((name.decode(), value[8:] if len(value) > 8 else None, stamp))
    return Record.from_rows(
        int(created, 16) if writes else 0,
        int(writes, 16) if writes else 0,
        clear,
        text,
        text_stamp,
        rows,
    )


def _hash_of(rec: Record) -> list[bytes]:
    """The hash fields (layout 2) of a whole record, as HSET's arguments."""
    out: list[bytes] = []
    bag = 0
    for name, value in rec.values.items():
        out += (name.encode(), rec.stamps[name].to_bytes(8) + value)
        bag += _member_len(name, value) + 1
    for name, stamp in rec.tombs.items():
        out += (name.encode(), stamp.to_bytes(8))
    if rec.text is not None:
        out += (_TEXT, rec.text_stamp.to_bytes(8) + rec.text.encode("utf-8", "surrogatepass"))
    etag = rec.etag if rec.live else ""
    if rec.tombs or rec.clear:
        head = f"{bag},{etag},{len(rec.tombs)},{rec.clear}"
    else:
        head = f"{bag},{etag}"
    out += (_HEAD, head.encode())
    return out


def _record_of_layout_1(fields: Mapping[bytes, bytes]) -> Record:
    """A record from its layout-1 fields (see ``_redis_lua``): a stamp ``s:<name>`` per
    entry, its value ``v:<name>`` when live, ``created``, ``writes``, ``clear``,
    ``text``/``ts``."""
    rows: list[tuple[str, bytes | None, int]] = [
        (name[2:].decode(), fields.get(b"v:" + name[2:]), int(stamp))
        for name, stamp in fields.items()
        if name[:2] == b"s:"
    ]
    text = fields.get(b"text")
    return Record.from_rows(
        int(fields.get(b"created", 0)),
        int(fields.get(b"writes", 0)),
        int(fields.get(b"clear", 0)),
        text.decode("utf-8", "surrogatepass") if text is not None else None,
        int(fields.get(b"ts", 0)),
        rows,
    )
