"""The aiohttp server middleware: play bags back into incoming messages, persist replies."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Collection, Mapping
from typing import Any, Literal

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler
from aiohttp.web_protocol import RequestPayloadError
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from . import _body
from ._body import DEFAULT_MAX_DEPTH, NOT_JSON, BodyError
from ._change import (
    DEFAULT_MAX_BAG_BYTES,
    DEFAULT_MAX_PROPERTIES,
    BagError,
    Change,
    PendingChange,
    fold_replies,
)
from ._client import InlineStateClientMiddleware
from ._clock import HybridClock
from ._codec import join_bag
from ._keys import RecordKey, TurnKeys, turn_keys
from ._message import (
    FIELD_OF_KIND,
    KINDS,
    Kind,
    detect_shape,
    is_delete_user_data,
    may_carry_bags,
    reply_messages,
    strip_bags,
)
from ._posted import posted_changes
from ._turn import Turn, _current
from .stores import ApplyResult, RedisStore, Store, StoreUnavailable, open_store

__all__ = [
    "STORE_KEY",
    "InlineStateMiddleware",
    "ReplyResponse",
    "get_message",
    "get_turn",
    "setup",
]

logger = logging.getLogger("inline_state")

# The only way to hand a rewritten body to `await request.json()`: aiohttp caches the
# body read by `read()` in this attribute. Fail at import if it ever goes away.
if "_read_bytes" not in web.BaseRequest.ATTRS:  # pragma: no cover - canary
    raise ImportError("inline_state needs aiohttp's Request._read_bytes (aiohttp 3.12-3.14)")

STORE_KEY: web.AppKey[Store] = web.AppKey("inline_state.store", Store)
_TURN_KEY: Any = (
    web.RequestKey("inline_state.turn", Turn) if hasattr(web, "RequestKey") else "inline_state.turn"
)
DEFAULT_MAX_ID_LENGTH = 1024


def get_turn(request: web.Request) -> Turn | None:
    """The turn inline_state opened for this request, or None if it did not act on it."""
    turn: Turn | None = request.get(_TURN_KEY)
    return turn


def get_message(request: web.Request) -> dict[str, Any] | None:
    """The incoming message with its bags played back, or None if it was not a message.

    The same content ``await request.json()`` returns, without parsing the body again.
    """
    turn = get_turn(request)
    return turn.message if turn is not None else None


def _error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message, **extra}}, status=status)


async def read_body(request: web.BaseRequest) -> bytes:
    """The request body, or BodyError: over ``client_max_size`` (413), or bytes that do
    not match their Content-Encoding (400)."""
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BodyError(
            413,
            "BodyTooLarge",
            f"the body is larger than the server's limit of {request.client_max_size} bytes",
        ) from None
    except RequestPayloadError as exc:
        # After the response aiohttp would read the rest of the broken payload and log
        # the same error again with a traceback: end the payload here and close the
        # connection (its parser is broken anyway) once the answer is sent.
        request.content.feed_eof()
        request.protocol.close()
        encoding = request.headers.get(hdrs.CONTENT_ENCODING, "")
        raise BodyError(
            400,
            "UndecodableBody",
            f"the body cannot be read as sent (Content-Encoding {encoding!r}):"
            f" {' '.join(str(exc).split())}",
            close_connection=True,
        ) from None


def body_error_response(exc: BodyError) -> web.Response:
    """A refused body's JSON error response."""
    response = web.json_response(exc.to_json(), status=exc.status)
    if exc.close_connection:
        response.force_close()
    return response


def id_too_long(key: RecordKey, limit: int) -> str | None:
    """Which id of a key is longer than ``limit`` characters, said in words; else None."""
    for name, value in (
        ("bot", key.bot),
        ("channel", key.channel or ""),
        ("conversation", key.conversation),
        ("user", key.user),
    ):
        if len(value) > limit:
            return f"the {name} id is {len(value)} characters, over the limit of {limit}"
    return None


class ReplyResponse(web.Response):
    """A JSON response that keeps the reply objects until it is sent.

    ``return ReplyResponse({"activities": replies})`` answers like
    ``web.json_response`` but lets the middleware read the bags from the objects
    instead of parsing the body the bot just serialized: the body is serialized once,
    after the bags are stripped. ``data`` is the body as given.
    """

    def __init__(
        self, data: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(status=status, headers=headers, content_type="application/json")
        self.data = data
        self._encoded = False

    def encode(self) -> None:
        """Serialize ``data`` into the body (once); TypeError or ValueError as
        ``json.dumps`` raises them for data JSON cannot write."""
        if not self._encoded:
            self._encoded = True
            try:
                self.body = json.dumps(self.data).encode("utf-8")
            except RecursionError:
                raise ValueError("the reply nests too deeply to be written as JSON") from None

    async def prepare(self, request: web.BaseRequest) -> Any:
        """Serialize, then send like any response (also where no middleware ran).

        Data JSON cannot write is answered with a 500 JSON error saying why (there is
        no handler left to raise into).
        """
        try:
            self.encode()
        except (TypeError, ValueError) as exc:
            logger.error("inline_state: a ReplyResponse cannot be written as JSON: %s", exc)
            self.set_status(500)
            self.body = json.dumps(
                {"error": {"code": "InvalidReply", "message": f"the reply is not JSON: {exc}"}}
            ).encode()
        return await super().prepare(request)


def _splice(raw: bytes, fields: list[tuple[str, bytes]], empty: bool) -> bytes:
    """Insert ``"field":bag`` members before the closing brace of a JSON object."""
    end = raw.rfind(b"}")
    members = b",".join([b'"' + name.encode() + b'":' + bag for name, bag in fields])
    return raw[:end] + (members if empty else b"," + members) + raw[end:]


class InlineStateMiddleware:
    """Plays the three bags back into incoming messages and persists replies' changes.

    Add it with ``setup()``, or yourself: ``app.middlewares.append(mw)`` plus
    ``app.cleanup_ctx.append(mw.cleanup_ctx)``. It must sit inside any middleware that
    clones requests, and behind the bot's channel authentication: it trusts the ids of
    the messages that reach it.

    ``store`` is a URL (opened and closed with the app), a ``redis.asyncio`` client (the
    caller keeps owning it), or a Store instance (the caller opens and closes it).
    ``merge="bag"`` replaces whole bags like v1 did instead of merging per property.
    ``keep_fields`` leaves the bags on the wire.

    Limits (each refused with a JSON error that names it): ``max_bag_bytes`` of JSON
    per bag (after merging, too), ``max_properties`` per bag, ``max_depth`` levels of
    JSON nesting in a body or a bag, and ``max_id_length`` characters per id of a
    record that is written (reads of existing records never fail). The body size is
    aiohttp's ``client_max_size`` (1 MiB by default): larger bodies get 413.
    """

    __middleware_version__ = 1

    def __init__(
        self,
        store: str | Store | Redis | RedisCluster = "memory://",
        *,
        paths: Collection[str] = ("/api/messages",),
        clock: HybridClock | None = None,
        merge: Literal["property", "bag"] = "property",
        keep_fields: bool = False,
        max_bag_bytes: int = DEFAULT_MAX_BAG_BYTES,
        max_properties: int = DEFAULT_MAX_PROPERTIES,
        max_depth: int = DEFAULT_MAX_DEPTH,
        max_id_length: int = DEFAULT_MAX_ID_LENGTH,
        **store_options: Any,
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
        self._owns_store = not isinstance(store, Store)
        if isinstance(store, str):
            self.store = open_store(store, clock=clock, **store_options)
        elif isinstance(store, (Redis, RedisCluster)):
            # The caller's client: the store is ours to open, the client stays theirs.
            self.store = RedisStore(store, clock=clock, **store_options)
        elif store_options:
            raise TypeError(f"store options {sorted(store_options)} need a store URL or client")
        else:
            self.store = store
        # One clock per store: its node id is leased by the store when it opens, so two
        # live writers never issue the same stamp. An injected clock is used as given.
        self.clock: HybridClock = clock if clock is not None else self.store.clock
        self.paths = frozenset(paths)
        self.whole_bag: frozenset[Kind] = frozenset(KINDS) if merge == "bag" else frozenset()
        self.keep_fields = keep_fields
        self.max_bag_bytes = max_bag_bytes
        self.max_properties = max_properties
        self.max_depth = max_depth
        self.max_id_length = max_id_length
        self._client = InlineStateClientMiddleware(self)

    @property
    def client(self) -> InlineStateClientMiddleware:
        """The client middleware for replies POSTed with ``ClientSession``, sharing the
        store, clock and options: ``ClientSession(middlewares=(mw.client,))``."""
        return self._client

    async def ensure_clock(self) -> HybridClock:
        """The clock (the store's own unless one was injected)."""
        return self.clock

    async def posted_changes(
        self, msg: dict[str, Any], keys: TurnKeys, turn: Turn | None
    ) -> list[Change]:
        """The changes of a reply POSTed to the channel, with this middleware's store,
        clock and options (see ``_posted.posted_changes``; raises BagError)."""
        return await posted_changes(
            msg,
            keys,
            turn,
            store=self.store,
            clock=self.clock,
            whole_bag=self.whole_bag,
            max_bag_bytes=self.max_bag_bytes,
            max_properties=self.max_properties,
            max_depth=self.max_depth,
        )

    async def cleanup_ctx(self, app: web.Application) -> AsyncIterator[None]:
        """Open the store (if given as a URL) and the clock with the app; close after."""
        if self._owns_store:
            await self.store.open()
        try:
            yield
        finally:
            if self._owns_store:
                await self.store.close()

    async def __call__(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method != hdrs.METH_POST or request.path not in self.paths:
            return await handler(request)
        try:
            clock = self.clock
            turn = await self._incoming(request, clock)
        except StoreUnavailable as exc:
            return self._unavailable(exc)
        except BodyError as exc:
            logger.warning("inline_state: refused a request to %s: %s", request.path, exc)
            return body_error_response(exc)
        except Exception as exc:  # a fault of ours must not become a bare 500
            return _internal_error("the incoming message", exc)
        if turn is None:
            return await handler(request)
        request[_TURN_KEY] = turn
        token = _current.set(turn)
        try:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                replacement = await self._outgoing_guarded(turn, exc, clock)
                if replacement is not None:
                    return replacement
                raise
            return await self._outgoing_guarded(turn, response, clock) or response
        finally:
            _current.reset(token)

    async def _outgoing_guarded(
        self, turn: Turn, response: web.StreamResponse, clock: HybridClock
    ) -> web.Response | None:
        try:
            return await self._outgoing(turn, response, clock)
        except Exception as exc:  # a fault of ours must not become a bare 500
            return _internal_error("the bot's reply", exc)

    @staticmethod
    def _unavailable(exc: StoreUnavailable) -> web.Response:
        logger.error("state store unavailable: %s", exc)
        return _error(503, "StoreUnavailable", f"the state store is unavailable: {exc}")

    async def _incoming(self, request: web.Request, clock: HybridClock) -> Turn | None:
        """Strip client-sent bags from any JSON body; open a turn for a message."""
        raw = await read_body(request)
        charset = request.charset
        parsed = _body.parse(raw, charset, self.max_depth)
        if parsed is NOT_JSON:
            if may_carry_bags(raw) or may_carry_bags(raw.replace(b"\0", b"")):
                # Some reading of these bytes (another charset, a lenient parser) might
                # find a bag in them; the bot must not get client-sent state.
                raise BodyError(
                    400,
                    "UnreadableBody",
                    "the body is not JSON in its declared charset, yet names a bag field"
                    " (botUserData, ...); it is refused so that no client-sent state can"
                    " reach the bot",
                )
            return None
        if isinstance(parsed, list):
            if any([strip_bags(item) for item in parsed if isinstance(item, dict)]):
                request._read_bytes = _body.encode(parsed, charset)
            return None
        if not isinstance(parsed, dict):
            return None
        msg: dict[str, Any] = parsed
        removed = strip_bags(msg)
        shape = detect_shape(msg)
        if shape is None:
            if removed:
                request._read_bytes = _body.encode(msg, charset)
            return None
        keys = turn_keys(msg, shape)
        played: dict[Kind, Mapping[str, bytes]] = {}
        text_kinds: set[Kind] = set()
        base = 0
        deleted = False
        if keys is None:
            pass
        elif is_delete_user_data(msg, shape):
            deleted = True
            if keys.user is not None and (owner := keys.user.owner) is not None:
                clock.observe(await self.store.delete_user(owner, clock.stamp()))
        else:
            base, observed = await self._load(keys, played, text_kinds)
            clock.observe(observed)
        if removed or played:
            self._rewrite_body(request, raw, msg, played, removed, charset)
        return Turn(
            shape,
            keys,
            played,
            message=msg,
            text_kinds=frozenset(text_kinds),
            base=base,
            deleted=deleted,
        )

    async def _load(
        self, keys: TurnKeys, played: dict[Kind, Mapping[str, bytes]], text_kinds: set[Kind]
    ) -> tuple[int, int]:
        present = [(kind, key) for kind in KINDS if (key := keys.of(kind)) is not None]
        records = await self.store.load([key for _, key in present])
        base = observed = 0
        for (kind, _), record in zip(present, records, strict=True):
            top = max(record.observed, record.deleted)
            observed = max(observed, top)
            if kind != "conversation":
                base = max(base, top)
            if record.props:
                played[kind] = record.props
            elif record.text is not None:
                text_kinds.add(kind)
        return base, observed

    @staticmethod
    def _rewrite_body(
        request: web.Request,
        raw: bytes,
        msg: dict[str, Any],
        played: Mapping[Kind, Mapping[str, bytes]],
        removed: bool,
        charset: str | None,
    ) -> None:
        fields = [(FIELD_OF_KIND[kind], join_bag(dict(props))) for kind, props in played.items()]
        if removed or not _body.is_utf8(charset) or json.detect_encoding(raw) != "utf-8":
            # Re-encode the whole message in its own charset.
            full = dict(msg)
            for name, bag in fields:
                full[name] = json.loads(bag)
            request._read_bytes = _body.encode(full, charset)
            return
        # The common case: UTF-8 bytes nobody sent a bag in; splice the bags in.
        request._read_bytes = _splice(raw, fields, not msg)

    async def _outgoing(
        self, turn: Turn, response: web.StreamResponse, clock: HybridClock
    ) -> web.Response | None:
        """Persist and strip the replies' bags; a response to send instead, if any."""
        if not isinstance(response, web.Response) or response.prepared:
            logger.warning(
                "inline_state: a streamed or prepared response passes through untouched;"
                " bags in it are neither persisted nor stripped"
            )
            return None
        charset: str | None = "utf-8"
        if isinstance(response, ReplyResponse) and not response._encoded:
            parsed = response.data  # the bot's own objects: nothing to parse
        else:
            body = response.body
            if not isinstance(body, (bytes, bytearray)) or not _body.is_json_type(
                response.content_type
            ):
                return None
            charset = response.charset
            utf8 = _body.is_utf8(charset)
            if utf8 and not may_carry_bags(body):
                return None
            try:
                parsed = _body.parse(bytes(body), charset, self.max_depth)
            except BodyError as exc:
                parsed, problem = NOT_JSON, str(exc)
            else:
                problem = "it is not JSON in its declared charset"
            if parsed is NOT_JSON:
                if utf8 and not may_carry_bags(body.replace(b"\0", b"")):
                    return None
                # Passing it on could hand a bag to the client; refuse it instead.
                logger.error("inline_state: the bot's reply cannot be read: %s", problem)
                return _error(
                    500,
                    "InvalidReply",
                    f"the bot's reply was not sent: {problem}, and it may carry a bag",
                )
        replies = reply_messages(parsed)
        if replies is None:
            return None
        try:
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
        except BagError as exc:
            logger.error("inline_state: invalid bag in the reply: %s", exc)
            return web.json_response(exc.to_json(), status=500)
        if pending:
            failure = await self._persist(turn, pending, clock)
            if failure is not None:
                return failure
        stripped = not self.keep_fields and any([strip_bags(reply) for reply in replies])
        if isinstance(response, ReplyResponse) and not response._encoded:
            try:
                response.encode()
            except (TypeError, ValueError) as exc:
                logger.error("inline_state: the bot's reply cannot be written as JSON: %s", exc)
                return _error(
                    500, "InvalidReply", f"the bot's reply cannot be written as JSON: {exc}"
                )
        elif stripped:
            response.headers.popall(hdrs.CONTENT_LENGTH, None)
            response.body = _body.encode(parsed, charset)
        return None

    async def _persist(
        self, turn: Turn, pending: Mapping[Kind, PendingChange], clock: HybridClock
    ) -> web.Response | None:
        if turn.deleted:
            logger.info("inline_state: bags of a reply to a user-data deletion are ignored")
            return None
        changes: list[Change] = []
        try:
            stamp = clock.stamp()
        except StoreUnavailable as exc:
            return self._unavailable(exc)
        for kind, change in pending.items():
            key = turn.keys.of(kind) if turn.keys is not None else None
            if key is None:
                logger.warning(
                    "inline_state: cannot persist %s: the incoming message lacks its ids",
                    FIELD_OF_KIND[kind],
                )
                continue
            too_long = id_too_long(key, self.max_id_length)
            if too_long is not None:
                message = f"{FIELD_OF_KIND[kind]} cannot be stored: {too_long}"
                logger.warning("inline_state: %s", message)
                return _error(400, "IdTooLong", message)
            if kind in turn.text_kinds:
                logger.warning(
                    "inline_state: the %s record holds a string written through the REST"
                    " API; the reply's bag replaces it",
                    kind,
                )
            changes.append(change.stamped(key, stamp, turn.base, self.max_bag_bytes))
        if not changes:
            return None
        try:
            results = await self.store.apply(changes)
        except StoreUnavailable as exc:
            return self._unavailable(exc)
        for applied, result in zip(changes, results, strict=True):
            if result is ApplyResult.TOO_LARGE:
                field = FIELD_OF_KIND[applied.key.kind]
                error = BagError(
                    field,
                    "tooLarge",
                    f"merged with the stored record it would exceed the limit of"
                    f" {self.max_bag_bytes} bytes",
                    limit=self.max_bag_bytes,
                )
                logger.error("inline_state: %s", error)
                return web.json_response(error.to_json(), status=500)
        return None


def _internal_error(where: str, exc: Exception) -> web.Response:
    # No traceback at error level: the message says what failed; debug logging keeps it.
    logger.error("inline_state: internal error on %s: %s: %s", where, type(exc).__name__, exc)
    logger.debug("inline_state: internal error on %s", where, exc_info=exc)
    return _error(
        500, "InternalError", f"inline_state failed on {where}: {type(exc).__name__}: {exc}"
    )


def setup(
    app: web.Application,
    store: str | Store | Redis | RedisCluster = "memory://",
    **options: Any,
) -> InlineStateMiddleware:
    """Add inline state to an app: the middleware, and the store's lifecycle.

    ``store`` is a URL, an existing ``redis.asyncio`` client, or a Store instance;
    ``options`` are those of InlineStateMiddleware (``paths``, ``clock``, ``merge``,
    ``keep_fields``, ``max_bag_bytes``, ``max_properties``, ``max_depth``,
    ``max_id_length``) and, with a URL or a client, the store's
    (``ttl``, ``tombstone_ttl``, ``prefix``...).
    """
    middleware = InlineStateMiddleware(store, **options)
    app.middlewares.append(middleware)
    app.cleanup_ctx.append(middleware.cleanup_ctx)
    app[STORE_KEY] = middleware.store
    return middleware
