"""The engine: one per app, holding the store, the clock and the rules.

Every adapter (the server middleware, the client middleware, the proxy, the REST API,
the SDK integrations) holds an engine and asks it the same three things: open a turn
from an incoming message, compute the changes of a response's replies or of a POSTed
reply, and commit changes. Stamping and the base rule live here, once.

The base rule: a change's base is the highest stamp its turn observed on the user's own
record and their per-user-in-conversation records, and the user's deletion stamp.
Conversation records never count: one written by a host with a fast clock must not let
a reply loaded before a deletion bring the user's data back.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from time import perf_counter
from typing import TYPE_CHECKING, Any, Literal

from ._change import DEFAULT_MAX_BAG_BYTES, DEFAULT_MAX_PROPERTIES, Change
from ._clock import EPOCH_MS, MS_SHIFT, HybridClock
from ._codec import DEFAULT_MAX_DEPTH
from ._counters import (
    Counters,
    counter_names,
    entries_of,
    fold,
    may_hide,
    newest_increment,
    parse,
)
from ._counters import played as played_of
from ._diff import PendingChange, fold_increments, fold_replies
from ._errors import BagError, IdTooLong, StoreError, StoreUnavailable
from ._keys import RecordKey, TurnKeys, turn_keys
from ._message import FIELD_OF_KIND, KINDS, Kind, Shape, bag_field_names, increment_field_names
from ._metrics import Metrics
from ._posted import PostedTarget, posted_keys
from ._turn import Turn
from .stores import (
    DEFAULT_TOMBSTONE_TTL,
    KEYS_RECORD,
    ApplyResult,
    Store,
    StoredRecord,
    resolve_store,
)

if TYPE_CHECKING:
    from ._seal import KeyRing

__all__ = ["Engine"]

logger = logging.getLogger("inline_state")

DEFAULT_MAX_ID_LENGTH = 1024
#: Increments older than this are folded into their property's value by the next turn
#: that loads the record (one more write); one delivered later than this is lost.
FOLD_AGE_MS = 10_000
_NO_KINDS: frozenset[Kind] = frozenset()
_NO_NAMES: frozenset[str] = frozenset()
_INDEX: dict[Kind, int] = {kind: index for index, kind in enumerate(KINDS)}
_new_change = tuple.__new__  # a NamedTuple without its Python-level __new__
_NO_INCREMENTS: Mapping[Kind, Mapping[str, int]] = {}
_NO_COUNTERS: Mapping[Kind, Counters] = {}


def id_too_long(key: RecordKey, limit: int) -> str | None:
    """Which id of a key is longer than ``limit`` characters, said in words; else None."""
    if (
        len(key.user) <= limit
        and len(key.conversation) <= limit
        and len(key.bot) <= limit
        and len(key.channel or "") <= limit
    ):
        return None
    for name, value in (
        ("bot", key.bot),
        ("channel", key.channel or ""),
        ("conversation", key.conversation),
        ("user", key.user),
    ):
        if len(value) > limit:
            return f"the {name} id is {len(value)} characters, over the limit of {limit}"
    return None


class Engine:
    """The store, the clock and the rules of inline state.

    ``store`` is a ready Store instance; ``owns_store`` makes ``start()``/``stop()``
    open and close it. ``clock`` defaults to the store's own (whose node id the store
    leases when it opens). ``merge="bag"`` replaces whole bags like v1 did;
    ``keep_fields`` leaves the bags on the wire. The limits: ``max_bag_bytes`` of JSON
    per bag (checked again on the merged record), ``max_properties`` per bag,
    ``max_depth`` levels of nesting in a body or a bag, ``max_id_length`` characters per
    id of a record that is written. ``metrics`` keeps the counters ``add_metrics``
    exports (``Engine.metrics``; None when off).
    """

    def __init__(
        self,
        store: Store,
        *,
        owns_store: bool = False,
        clock: HybridClock | None = None,
        merge: Literal["property", "bag"] = "property",
        keep_fields: bool = False,
        max_bag_bytes: int = DEFAULT_MAX_BAG_BYTES,
        max_properties: int = DEFAULT_MAX_PROPERTIES,
        max_depth: int = DEFAULT_MAX_DEPTH,
        max_id_length: int = DEFAULT_MAX_ID_LENGTH,
        metrics: bool = True,
    ) -> None:
        if merge not in ("property", "bag"):
            raise ValueError(f"merge must be 'property' or 'bag', got {merge!r}")
        if max_bag_bytes <= 2:
            raise ValueError(f"max_bag_bytes must be above 2, got {max_bag_bytes}")
        for name, value in (
            ("max_properties", max_properties),
            ("max_depth", max_depth),
            ("max_id_length", max_id_length),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self.store = store
        self.owns_store = owns_store
        self.clock: HybridClock = clock if clock is not None else store.clock
        self.merge = merge
        self.whole_bag: frozenset[Kind] = frozenset(KINDS) if merge == "bag" else frozenset()
        self.keep_fields = keep_fields
        self.max_bag_bytes = max_bag_bytes
        self.max_properties = max_properties
        self.max_depth = max_depth
        self.max_id_length = max_id_length
        self.metrics = Metrics() if metrics else None
        self._leased = False

    @classmethod
    def create(
        cls,
        store: str | Store | Any = "memory://",
        *,
        clock: HybridClock | None = None,
        merge: Literal["property", "bag"] = "property",
        keep_fields: bool = False,
        max_bag_bytes: int = DEFAULT_MAX_BAG_BYTES,
        max_properties: int = DEFAULT_MAX_PROPERTIES,
        max_depth: int = DEFAULT_MAX_DEPTH,
        max_id_length: int = DEFAULT_MAX_ID_LENGTH,
        ttl: Mapping[Kind, float] | None = None,
        tombstone_ttl: float = DEFAULT_TOMBSTONE_TTL,
        prefix: str | None = None,
        timeout: float | None = None,
        metrics: bool = True,
        encryption: KeyRing | None = None,
    ) -> Engine:
        """An engine over a store given as a URL (the engine opens and closes it), an
        existing ``redis.asyncio`` client (the caller keeps owning the client), or a Store
        instance (the caller opens and closes it). ``ttl``, ``tombstone_ttl``, ``prefix``
        (Redis) and ``timeout`` configure a store made from a URL or a client.
        ``encryption``: seal every stored value with these keys (a ``SealedStore``
        around the store; opening it checks the keys)."""
        resolved, owned = resolve_store(
            store, clock=clock, ttl=ttl, tombstone_ttl=tombstone_ttl, prefix=prefix, timeout=timeout
        )
        if encryption is not None:
            from .stores.sealed import SealedStore

            resolved, owned = SealedStore(resolved, encryption, owns_inner=owned), True
        return cls(
            resolved,
            owns_store=owned,
            clock=clock,
            merge=merge,
            keep_fields=keep_fields,
            max_bag_bytes=max_bag_bytes,
            max_properties=max_properties,
            max_depth=max_depth,
            max_id_length=max_id_length,
            metrics=metrics,
        )

    async def start(self) -> None:
        """Open the store if the engine owns it; otherwise make sure the store's clock
        holds a node id (a caller may hand over a store it never opened)."""
        if self.owns_store:
            await self.store.open()
        elif self.clock is self.store.clock:
            self._leased = await self.store.ensure_clock()
        if not hasattr(self.store, "keys"):  # a plain store: is the data sealed?
            try:
                (keys_record,) = await self.store.load([KEYS_RECORD])
            except StoreUnavailable:  # down now: its turns will say so, one by one
                return
            if keys_record.exists:
                await self.stop()
                raise StoreError(
                    "the store's values are sealed: open it with its keys,"
                    " setup(..., encryption=inline_state.KeyRing.load())"
                )

    async def stop(self) -> None:
        """Close the store if the engine owns it; end a lease ``start`` began."""
        if self.owns_store:
            await self.store.close()
        elif self._leased:
            self._leased = False
            await self.store.release_clock()

    # -- incoming -------------------------------------------------------------------------

    async def open_turn(self, msg: dict[str, Any], shape: Shape) -> Turn:
        """Load the records of an incoming message (bags already stripped from it), or
        delete its user's data for a deletion request; the turn the replies diff against.

        Raises StoreUnavailable.
        """
        metrics = self.metrics
        if metrics is not None:
            metrics.turns += 1
        keys = turn_keys(msg, shape)
        if keys is None:
            return Turn(shape, None, {}, message=msg)
        if msg.get("type") == ("deleteUserData" if shape is Shape.V3 else "DeleteUserData"):
            if keys.user is not None and (owner := keys.user.owner) is not None:
                clock = self.clock
                clock.observe(
                    await _timed(
                        self.metrics, "delete_user", self.store.delete_user(owner, clock.stamp())
                    )
                )
            return Turn(shape, keys, {}, message=msg, deleted=True)
        wanted = [key for key in keys if key is not None]
        if metrics is None:
            records = await self.store.load(wanted)
        else:  # (as _timed, inlined: every turn pays for this)
            started = perf_counter()
            try:
                records = await self.store.load(wanted)
            except StoreUnavailable:
                metrics.unavailable["load"] += 1
                raise
            elapsed, seconds = perf_counter() - started, metrics.load_seconds
            seconds.counts[bisect_left(seconds.bounds, elapsed)] += 1
            seconds.total += elapsed
        played: dict[Kind, Mapping[str, bytes]] = {}
        counters: dict[Kind, Counters] | None = None
        text_kinds: frozenset[Kind] = _NO_KINDS
        base = observed = 0
        for key, record in zip(wanted, records, strict=True):
            props = record.props
            if props and may_hide(props):
                if counters is None:
                    counters = {}
                parsed = counters[key.kind] = parse(props)
                props = played_of(parsed)
            if props:
                played[key.kind] = props
            elif record.text is not None:
                text_kinds = text_kinds | {key.kind}
            top = record.observed if record.observed > record.deleted else record.deleted
            if top > observed:
                observed = top
            if top > base and key.kind != "conversation":  # the base rule
                base = top
        self.clock.observe(observed)
        return Turn(
            shape,
            keys,
            played,
            message=msg,
            text_kinds=text_kinds,
            base=base,
            counters=counters,
        )

    # -- outgoing -------------------------------------------------------------------------

    def reply_changes(self, turn: Turn, replies: Sequence[dict[str, Any]]) -> list[Change]:
        """The stamped changes of a response's replies, diffed against the turn.

        Raises BagError (a bag that cannot be stored) or IdTooLong before anything is
        written; StoreUnavailable when the clock's lease lapsed.
        """
        pending = fold_replies(
            replies,
            turn.played,
            whole_bag=self.whole_bag,
            text_kinds=turn.text_kinds,
            limit=self.max_bag_bytes,
            played_values=turn.decoded,
            max_properties=self.max_properties,
            max_depth=self.max_depth,
        )
        increments = fold_increments(
            replies,
            pending,
            turn.played,
            whole_bag=self.whole_bag,
            limit=self.max_bag_bytes,
            max_properties=self.max_properties,
        )
        if not pending and not increments and not turn.counters:
            return []
        if turn.deleted:
            logger.info("inline_state: bags of a reply to a user-data deletion are ignored")
            return []
        keys = turn.keys
        return self._stamp(pending, keys, turn.base, turn.text_kinds, increments, turn.counters)

    async def posted_changes(
        self, msg: dict[str, Any], target: PostedTarget, turn: Turn | None
    ) -> list[Change]:
        """The stamped changes of a reply POSTed to the channel (raises BagError).

        A kind whose record is the one the current turn played back is diffed against
        the played bag, exactly like an inline reply; anything else (a proactive
        message, a reply to another user) replaces the bag wholesale, after a load that
        observes the records' stamps and the owner's deletion stamp.
        """
        keys = posted_keys(msg, target, turn)
        if keys is None:
            return []
        present: set[Kind] = {kind for _, kind in bag_field_names(msg)}
        present |= {kind for _, kind in increment_field_names(msg)}
        played: dict[Kind, Mapping[str, bytes]] = {}
        diffed: set[Kind] = set()
        own = turn.keys if turn is not None else None
        for kind in present:
            key = keys.of(kind)
            if own is not None and key is not None and key == own.of(kind):
                diffed.add(kind)
                if turn is not None and kind in turn.played:
                    played[kind] = turn.played[kind]
        proactive = [
            (k, key) for k in KINDS if k in present and k not in diffed and (key := keys.of(k))
        ]
        base = turn.base if turn is not None else 0
        if proactive:
            records = await _timed(
                self.metrics, "load", self.store.load([key for _, key in proactive])
            )
            self.clock.observe(_observed(records))
            base = max(base, _base(proactive, records))
        text_kinds = (turn.text_kinds & frozenset(diffed)) if turn is not None else frozenset()
        pending = fold_replies(
            [msg],
            played,
            whole_bag=self.whole_bag | frozenset(kind for kind, _ in proactive),
            text_kinds=text_kinds,
            limit=self.max_bag_bytes,
            max_properties=self.max_properties,
            max_depth=self.max_depth,
        )
        increments = fold_increments(
            [msg],
            pending,
            played,
            whole_bag=self.whole_bag,  # a proactive reply's increments stay increments
            limit=self.max_bag_bytes,
            max_properties=self.max_properties,
        )
        if turn is not None and turn.deleted:
            pending = {kind: change for kind, change in pending.items() if kind not in diffed}
            increments = {kind: i for kind, i in increments.items() if kind not in diffed}
        counters = (
            {k: v for k, v in turn.counters.items() if k in diffed} if turn is not None else {}
        )
        if not pending and not increments:
            return []
        return self._stamp(pending, keys, base, text_kinds, increments, counters)

    def _stamp(
        self,
        pending: Mapping[Kind, PendingChange],
        keys: TurnKeys | None,
        base: int,
        text_kinds: frozenset[Kind],
        increments: Mapping[Kind, Mapping[str, int]] = _NO_INCREMENTS,
        counters: Mapping[Kind, Counters] = _NO_COUNTERS,
    ) -> list[Change]:
        """One stamp for all of a response's changes (the only place stamps are taken
        for bags), with their increments and the folds of old ones (``_counters``)."""
        if increments or counters:
            pending = dict(pending)
            for kind in increments.keys() | counters.keys():
                if kind not in pending:
                    replace = kind in text_kinds and kind in increments
                    pending[kind] = PendingChange(replace=replace)
        ready: list[tuple[RecordKey, PendingChange]] = []
        limit = self.max_id_length
        for kind, change in pending.items():
            key = keys[_INDEX[kind]] if keys is not None else None
            if key is None:
                logger.warning(
                    "inline_state: cannot persist %s: the message lacks its ids",
                    FIELD_OF_KIND[kind],
                )
                continue
            # The sum bounds each id: the walk over them runs only for long ids.
            if (
                len(key.bot) + len(key.user) + len(key.conversation) + len(key.channel or "")
                > limit
            ):
                too_long = id_too_long(key, limit)
                if too_long is not None:
                    raise IdTooLong(f"{FIELD_OF_KIND[kind]} cannot be stored: {too_long}")
            if text_kinds and kind in text_kinds:
                logger.warning(
                    "inline_state: the %s record holds a string written through the REST"
                    " API; the reply's bag replaces it",
                    kind,
                )
            ready.append((key, change))
        if not ready:
            return []
        stamp = self.clock.stamp()
        max_bytes = self.max_bag_bytes
        if increments or counters:
            return self._with_counters(ready, stamp, base, increments, counters)
        return [
            _new_change(
                Change,
                (
                    key,
                    change.sets,
                    frozenset(change.removes) if change.removes else _NO_NAMES,
                    change.replace,
                    stamp,
                    base,
                    max_bytes,
                ),
            )
            for key, change in ready
        ]

    def _with_counters(
        self,
        ready: list[tuple[RecordKey, PendingChange]],
        stamp: int,
        base: int,
        increments: Mapping[Kind, Mapping[str, int]],
        counters: Mapping[Kind, Counters],
    ) -> list[Change]:
        """The changes of a response that increments, or whose records hold counters:
        each with its hidden entries, after the folds of the records' old increments."""
        wall_horizon = (self.clock.wall_ms() - FOLD_AGE_MS - EPOCH_MS) << MS_SHIFT
        age = FOLD_AGE_MS << MS_SHIFT
        max_bytes = self.max_bag_bytes
        changes: list[Change] = []
        for key, change in ready:
            stored = counters.get(key.kind)
            marked: set[str] = set()
            removes = change.removes
            if stored is not None:
                # Not past the record's own newest increment less the age either: a host
                # whose clock runs fast must not fold increments still on their way.
                horizon = min(wall_horizon, newest_increment(stored) - age)
                folding = fold(stored, horizon)
                if folding is not None:
                    if folding.sets:
                        changes.append(
                            Change(
                                key,
                                folding.sets,
                                _NO_NAMES,
                                False,
                                folding.stamp,
                                base,
                                max_bytes,
                            )
                        )
                    removes = removes | folding.removes  # stamped above them: they go
                # A set or removal of a counter marks it: older increments stop counting.
                marked = counter_names(stored) & (change.sets.keys() | change.removes)
            hidden = entries_of(increments.get(key.kind, {}), marked, stamp)
            if not hidden and not change.sets and not removes and not change.replace:
                continue
            changes.append(
                Change(
                    key,
                    {**change.sets, **hidden} if hidden else change.sets,
                    frozenset(removes),
                    change.replace,
                    stamp,
                    base,
                    max_bytes,
                )
            )
        return changes

    async def commit(self, changes: Sequence[Change]) -> None:
        """Apply changes, each atomically to its record.

        Raises StoreUnavailable, or BagError when a merged record would exceed the limit
        (that record is left as it was; the others of the same call are applied).
        """
        if not changes:
            return
        metrics = self.metrics
        if metrics is None:
            results = await self.store.apply(changes)
        else:
            started = perf_counter()
            try:
                results = await self.store.apply(changes)
            except StoreUnavailable:
                metrics.unavailable["apply"] += 1
                raise
            elapsed, seconds = perf_counter() - started, metrics.apply_seconds
            seconds.counts[bisect_left(seconds.bounds, elapsed)] += 1
            seconds.total += elapsed
            counted, sizes = metrics.changes, metrics.change_bytes
            # A list of the wrong length is the store's fault, refused below: not here.
            for change, result in zip(changes, results, strict=False):
                if result is _APPLIED:
                    counted["applied"] += 1
                    size = sum(map(len, change.sets.values()))
                    sizes.counts[bisect_left(sizes.bounds, size)] += 1
                    sizes.total += size
                elif result in _RESULT_NAMES:  # (Enum.value is a Python-level property)
                    counted[_RESULT_NAMES[result]] += 1
        if ApplyResult.TOO_LARGE not in results and len(results) == len(changes):
            return
        for change, result in zip(changes, results, strict=True):
            if result is ApplyResult.TOO_LARGE:
                raise BagError(
                    FIELD_OF_KIND[change.key.kind],
                    "tooLarge",
                    f"merged with the stored record it would exceed the limit of"
                    f" {change.max_bytes} bytes",
                    limit=change.max_bytes,
                )


_APPLIED = ApplyResult.APPLIED
_RESULT_NAMES = {result: result.value for result in ApplyResult}


async def _timed(metrics: Metrics | None, operation: str, call: Any) -> Any:
    """Await a store call, timing it (and counting it if it fails) into ``metrics``."""
    if metrics is None:
        return await call
    started = perf_counter()
    try:
        result = await call
    except StoreUnavailable:
        metrics.unavailable[operation] += 1
        raise
    metrics.store_seconds[operation].observe(perf_counter() - started)
    return result


def _observed(records: Sequence[StoredRecord]) -> int:
    top = 0
    for record in records:
        top = max(top, record.observed, record.deleted)
    return top


def _base(present: Sequence[tuple[Kind, RecordKey]], records: Sequence[StoredRecord]) -> int:
    """The base rule (see the module docstring): user-owned records only."""
    base = 0
    for (kind, _), record in zip(present, records, strict=True):
        if kind != "conversation":
            base = max(base, record.observed, record.deleted)
    return base
