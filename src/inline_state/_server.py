"""The aiohttp server middleware: play bags back into incoming messages, persist replies.

One short ``__call__``: read and parse the body, strip client bags, open a turn (the
engine loads the records), hand the rewritten body to the bot, then diff, commit and
strip the reply. Everything about what a turn writes is the engine's.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Collection, Mapping
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from . import _body
from ._body import NOT_JSON, BodyError
from ._clock import HybridClock
from ._codec import dumps
from ._engine import Engine
from ._errors import StoreUnavailable, TurnError
from ._http import (
    body_error_response,
    internal_error_response,
    json_error,
    read_body,
    turn_error_response,
    unavailable_response,
)
from ._message import (
    FIELD_OF_KIND,
    detect_shape,
    lifted,
    may_carry_bags,
    may_hide_bags,
    reply_messages,
    strip_bags,
)
from ._turn import Turn, _current
from .stores import Store

if TYPE_CHECKING:
    from ._client import InlineStateClientMiddleware

__all__ = ["InlineStateMiddleware", "ReplyResponse", "get_message", "get_turn"]

logger = logging.getLogger("inline_state")

# The only way to hand a rewritten body to `await request.json()`: aiohttp caches the
# body read by `read()` in this attribute. Fail at import if it ever goes away.
if "_read_bytes" not in web.BaseRequest.ATTRS:  # pragma: no cover - canary
    raise ImportError("inline_state needs aiohttp's Request._read_bytes (aiohttp 3.12-3.14)")

_TURN_KEY: Any = (
    web.RequestKey("inline_state.turn", Turn) if hasattr(web, "RequestKey") else "inline_state.turn"
)


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


class ReplyResponse(web.Response):
    """A JSON response that keeps the reply objects until it is sent.

    ``return ReplyResponse({"activities": replies})`` answers like
    ``web.json_response`` but lets the middleware read the bags from the objects
    instead of parsing the body the bot just serialized: the body is serialized once,
    after the bags are stripped. ``data`` is the body as given. NaN and Infinity are
    written as ``null``.
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
            self.body = dumps(self.data)

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
            self.body = dumps(
                {"error": {"code": "InvalidReply", "message": f"the reply is not JSON: {exc}"}}
            )
        return await super().prepare(request)


_MEMBER_OF_KIND = {kind: b'"' + field.encode() + b'":' for kind, field in FIELD_OF_KIND.items()}


class InlineStateMiddleware:
    """Plays the three bags back into incoming messages and persists replies' changes.

    Add it with ``setup()``, or yourself: ``app.middlewares.append(mw)`` plus
    ``app.cleanup_ctx.append(mw.cleanup_ctx)``. It must sit inside any middleware that
    clones requests, and behind the bot's channel authentication: it trusts the ids of
    the messages that reach it. ``engine`` holds the store, the clock and the rules (a
    store URL, client or instance gets an engine with the default options:
    ``Engine.create(store, ...)`` for others); ``paths`` are the POST paths it acts on.
    """

    __middleware_version__ = 1

    def __init__(
        self,
        engine: Engine | str | Store | Any = "memory://",
        *,
        paths: Collection[str] = ("/api/messages",),
        client: InlineStateClientMiddleware | None = None,
    ) -> None:
        self.engine: Engine = engine if isinstance(engine, Engine) else Engine.create(engine)
        self.paths = frozenset(paths)
        self._client = client

    @property
    def store(self) -> Store:
        """The engine's store."""
        return self.engine.store

    @property
    def clock(self) -> HybridClock:
        """The engine's clock."""
        return self.engine.clock

    @property
    def client(self) -> InlineStateClientMiddleware:
        """The client middleware ``setup()`` built on the same engine, for replies POSTed
        with ``ClientSession``: ``ClientSession(middlewares=(mw.client,))``."""
        if self._client is None:
            raise AttributeError(
                "this middleware was built without a client middleware: use"
                " InlineStateClientMiddleware(middleware.engine)"
            )
        return self._client

    async def ensure_clock(self) -> HybridClock:
        """The engine's clock (kept for code that awaited it)."""
        return self.engine.clock

    async def cleanup_ctx(self, app: web.Application) -> AsyncIterator[None]:
        """Open the store (if the engine owns it) with the app; close it after."""
        await self.engine.start()
        try:
            yield
        finally:
            await self.engine.stop()

    async def __call__(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method != hdrs.METH_POST or request.path not in self.paths:
            return await handler(request)
        try:
            turn = await self._incoming(request)
        except StoreUnavailable as exc:
            return unavailable_response(exc)
        except BodyError as exc:
            logger.warning("inline_state: refused a request to %s: %s", request.path, exc)
            return body_error_response(exc)
        except Exception as exc:  # a fault of ours must not become a bare 500
            return internal_error_response("the incoming message", exc)
        if turn is None:
            return await handler(request)
        request[_TURN_KEY] = turn
        token = _current.set(turn)
        try:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                replacement = await self._outgoing(turn, exc)
                if replacement is not None:
                    return replacement
                raise
            except TurnError as exc:  # ours, from a client middleware inside the bot
                return turn_error_response(exc)
            except StoreUnavailable as exc:
                return unavailable_response(exc)
            return await self._outgoing(turn, response) or response
        finally:
            _current.reset(token)

    async def _incoming(self, request: web.Request) -> Turn | None:
        """Strip client-sent bags from any JSON body; open a turn for a message."""
        raw = await read_body(request)
        charset = _charset(request)
        parsed, exact = _body.parse_body(raw, charset, self.engine.max_depth)
        if parsed is NOT_JSON:
            if may_hide_bags(raw):
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
                request._read_bytes = _body.encode(parsed, charset, exact=exact)
            return None
        if not isinstance(parsed, dict):
            return None
        removed = strip_bags(parsed)
        shape = detect_shape(parsed)
        if shape is None:
            if removed:
                request._read_bytes = _body.encode(parsed, charset, exact=exact)
            return None
        turn = await self.engine.open_turn(parsed, shape)
        if removed or turn.played:
            request._read_bytes = _rewritten(raw, parsed, turn, removed, charset, exact)
        return turn

    async def _outgoing(self, turn: Turn, response: web.StreamResponse) -> web.Response | None:
        """Persist and strip the replies' bags; a response to send instead, if any."""
        try:
            return await self._persist(turn, response)
        except TurnError as exc:
            return turn_error_response(exc)
        except StoreUnavailable as exc:
            return unavailable_response(exc)
        except Exception as exc:  # a fault of ours must not become a bare 500
            return internal_error_response("the bot's reply", exc)

    async def _persist(self, turn: Turn, response: web.StreamResponse) -> web.Response | None:
        if not isinstance(response, web.Response) or response.prepared:
            logger.warning(
                "inline_state: a streamed or prepared response passes through untouched;"
                " bags in it are neither persisted nor stripped"
            )
            return None
        engine = self.engine
        exact = False
        charset: str | None = "utf-8"
        reply_objects = isinstance(response, ReplyResponse) and not response._encoded
        if reply_objects:
            parsed = response.data  # type: ignore[attr-defined]  # the bot's own objects
        else:
            body = response.body
            if not isinstance(body, (bytes, bytearray)):
                return None
            json_type = _body.is_json_type(response.content_type)
            charset = response.charset
            utf8 = _body.is_utf8(charset)
            # The cheap pre-check: bytes that cannot hold a bag field are not parsed (other
            # charsets of a JSON type always are: UTF-16 hides the markers).
            if utf8:
                if not may_carry_bags(body):
                    return None
            elif not json_type and not may_hide_bags(body):
                return None
            try:
                parsed, exact = _body.parse_body(bytes(body), charset, engine.max_depth)
            except BodyError as exc:
                parsed, problem = NOT_JSON, str(exc)
            else:
                problem = "it is not JSON in its declared charset"
            if parsed is NOT_JSON:
                if not json_type:
                    return None  # text that mentions a bag field, not a message
                if utf8 and not may_hide_bags(body):
                    return None
                # Passing it on could hand a bag to the client; refuse it instead.
                logger.error("inline_state: the bot's reply cannot be read: %s", problem)
                return json_error(
                    500,
                    "InvalidReply",
                    f"the bot's reply was not sent: {problem}, and it may carry a bag",
                )
        replies = reply_messages(parsed)
        if replies is None:
            return None
        # Bags under channelData.inlineState read as if at the top; the replies stay as is.
        await engine.commit(engine.reply_changes(turn, [lifted(reply) for reply in replies]))
        stripped = not engine.keep_fields and any([strip_bags(reply) for reply in replies])
        if reply_objects:
            try:
                response.encode()  # type: ignore[attr-defined]
            except (TypeError, ValueError) as exc:
                logger.error("inline_state: the bot's reply cannot be written as JSON: %s", exc)
                return json_error(
                    500, "InvalidReply", f"the bot's reply cannot be written as JSON: {exc}"
                )
        elif stripped:
            response.headers.popall(hdrs.CONTENT_LENGTH, None)
            response.body = _body.encode(parsed, charset, exact=exact)
        return None


def _rewritten(
    raw: bytes, msg: dict[str, Any], turn: Turn, removed: bool, charset: str | None, exact: bool
) -> bytes:
    """The body the bot reads: the message without client bags, with the played ones."""
    if not _body.is_utf8(charset) or exact or raw[:1] != b"{":
        # Another charset, a body only ``json`` reads, or one with a BOM or UTF-16 bytes:
        # re-encode the whole message in its own charset.
        full = dict(msg)
        for kind in turn.played:
            full[FIELD_OF_KIND[kind]] = orjson.loads(turn.bag_json(kind))  # canonical JSON
        return _body.encode(full, charset, exact=exact)
    # UTF-8: splice the stored bags (already JSON bytes) in; no re-encoding of values.
    base = dumps(msg) if removed else raw
    if not turn.played:
        return base
    end = base.rfind(b"}")
    parts = [base[:end]]
    for kind in turn.played:  # one copy of each bag, however long
        parts += (b",", _MEMBER_OF_KIND[kind], turn.bag_json(kind))
    if not msg:
        parts[1] = b""
    parts.append(base[end:])
    return b"".join(parts)


_CHARSET_OF: dict[str | None, str | None] = {}


def _charset(request: web.Request) -> str | None:
    """``request.charset``, remembered per Content-Type value (bots see a handful)."""
    raw = request.headers.get(hdrs.CONTENT_TYPE)
    charset = _CHARSET_OF.get(raw, _UNKNOWN)
    if charset is _UNKNOWN:
        charset = request.charset
        if len(_CHARSET_OF) < 64:  # the header is the client's: bounded
            _CHARSET_OF[raw] = charset
    return charset  # type: ignore[no-any-return]


_UNKNOWN: Any = object()
