"""The Bot State REST API (v1 and v3 paths) with ETags, over the cookie path's records.

Bots that cannot afford a stomped update read a record, change it, and write it back
with the eTag they read; a write that lost a race gets 412 and retries.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from aiohttp import hdrs, web

from . import _body
from ._body import NOT_JSON, BodyError
from ._change import DEFAULT_MAX_BAG_BYTES, DEFAULT_MAX_PROPERTIES
from ._codec import DEFAULT_MAX_DEPTH, join_bag
from ._counters import effective
from ._diff import encode_bag
from ._engine import DEFAULT_MAX_ID_LENGTH, id_too_long
from ._errors import BagError, InvalidCursor
from ._http import (
    Credentials,
    Refusal,
    StoreSlot,
    header_bytes,
    is_loopback,
    log_internal_error,
    not_allowed,
    read_body,
    readable,
    unreadable_body,
)
from ._keys import RecordKey, UserRef
from ._message import Kind
from .stores import (
    PreconditionFailed,
    RecordTooLarge,
    Store,
    StoredRecord,
    StoreUnavailable,
)

__all__ = ["add_state_api"]

logger = logging.getLogger("inline_state")

V1 = "/bot/v1.0/bots/{botId}"
V3 = "/v3/botstate/{channelId}"
#: (method, path) of every route, relative to the prefix.
ROUTES: tuple[tuple[str, str], ...] = (
    ("GET", V1 + "/users/{userId}"),
    ("POST", V1 + "/users/{userId}"),
    ("DELETE", V1 + "/users/{userId}"),
    ("GET", V1 + "/conversations/{conversationId}"),
    ("POST", V1 + "/conversations/{conversationId}"),
    ("GET", V1 + "/conversations/{conversationId}/users/{userId}"),
    ("POST", V1 + "/conversations/{conversationId}/users/{userId}"),
    ("GET", V3 + "/users/{userId}"),
    ("POST", V3 + "/users/{userId}"),
    ("DELETE", V3 + "/users/{userId}"),
    ("GET", V3 + "/conversations/{conversationId}"),
    ("POST", V3 + "/conversations/{conversationId}"),
    ("GET", V3 + "/conversations/{conversationId}/users/{userId}"),
    ("POST", V3 + "/conversations/{conversationId}/users/{userId}"),
    ("GET", V3 + "/exportBotStateData"),
)


class _StateApi:
    """Request handlers; one instance per mounted API."""

    def __init__(
        self,
        store: str | Store | None,
        credentials: Credentials,
        app_id: str | None,
        max_bytes: int,
        max_properties: int,
        max_depth: int,
        max_id_length: int,
    ) -> None:
        self.slot = StoreSlot(store, "add_state_api")
        self.credentials = credentials
        self.app_id = app_id
        self.max_bytes = max_bytes
        self.max_properties = max_properties
        self.max_depth = max_depth
        self.max_id_length = max_id_length

    def store(self, request: web.Request) -> Store:
        return self.slot.get(request)

    # -- auth ---------------------------------------------------------------------------

    def authenticate(self, request: web.Request) -> str:
        """The bot id the request's credential maps to; Refusal 401 otherwise."""
        no_auth_bot_id = self.credentials.no_auth_bot_id
        if no_auth_bot_id is not None:
            if is_loopback(request.remote):
                return no_auth_bot_id
            raise Refusal(401, "Unauthorized", "no-auth mode answers loopback clients only")
        header = request.headers.get(hdrs.AUTHORIZATION, "")
        scheme, _, value = header.partition(" ")
        secret: str | None = None
        if scheme.lower() == "bearer":
            secret = value.strip()
        elif scheme.lower() == "basic":
            try:
                app_id, _, secret = (
                    base64.b64decode(value.strip(), validate=True).decode().partition(":")
                )
            except ValueError:  # not base64 (or not ASCII), or not UTF-8 inside
                secret = None
            else:
                if self.app_id is not None and not hmac.compare_digest(
                    header_bytes(app_id), header_bytes(self.app_id)
                ):
                    secret = None
        bot_id = self.credentials.bot_of(secret)
        if bot_id is None:
            raise Refusal(401, "Unauthorized", "missing or invalid credentials")
        return bot_id

    # -- helpers ------------------------------------------------------------------------

    def writable(self, key: RecordKey) -> RecordKey:
        """``key``, or Refusal 400 when one of its ids is too long to be written."""
        too_long = id_too_long(key, self.max_id_length)
        if too_long is not None:
            raise Refusal(400, "BadArgument", f"the record cannot be written: {too_long}")
        return key

    def key(self, request: web.Request, kind: Kind, bot: str) -> RecordKey:
        info = request.match_info
        channel = info.get("channelId")  # None on v1 paths: their own namespace
        return RecordKey(
            kind,
            bot,
            channel,
            info.get("conversationId", "") if kind != "user" else "",
            info.get("userId", "") if kind != "conversation" else "",
        )

    def bot_for(self, request: web.Request) -> str:
        bot = self.authenticate(request)
        path_bot = request.match_info.get("botId")
        if path_bot is not None and path_bot != bot:
            raise Refusal(403, "Forbidden", f"the credential does not allow bot {path_bot!r}")
        return bot

    @staticmethod
    def body_of(record: StoredRecord) -> bytes:
        props = effective(readable(record).props)  # counters summed (_counters)
        if props:
            data = join_bag(dict(props))
        elif record.text is not None:
            data = json.dumps(record.text).encode()
        else:
            data = b"null"
        return b'{"data":' + data + b',"eTag":' + json.dumps(record.etag).encode() + b"}"

    # -- handlers -----------------------------------------------------------------------

    async def get(self, request: web.Request, kind: Kind) -> web.Response:
        key = self.key(request, kind, self.bot_for(request))
        [record] = await self.store(request).load([key])
        return web.Response(body=self.body_of(record), content_type="application/json")

    async def post(self, request: web.Request, kind: Kind) -> web.Response:
        key = self.writable(self.key(request, kind, self.bot_for(request)))
        try:
            body = _body.parse(await read_body(request), request.charset, self.max_depth)
        except BodyError as exc:
            raise Refusal(exc.status, exc.code, str(exc)) from None
        if body is NOT_JSON:
            raise Refusal(400, "BadSyntax", "the body is not valid JSON in its charset")
        if not isinstance(body, dict):
            raise Refusal(400, "BadArgument", "the body must be a JSON object {data, eTag}")
        etag = body.get("eTag")
        if etag is not None and not isinstance(etag, str):
            raise Refusal(400, "BadArgument", f"eTag must be a string, got {type(etag).__name__}")
        data = body.get("data")
        stored: Mapping[str, bytes] | str | None
        if isinstance(data, str):
            try:
                size = len(data.encode("utf-8")) + 2
            except UnicodeEncodeError:
                raise Refusal(
                    400,
                    "BadArgument",
                    "data holds a lone surrogate (an escape such as \\ud800 with no pair),"
                    " which cannot be stored",
                ) from None
            if size > self.max_bytes:
                raise Refusal(
                    400,
                    "MessageSizeTooBig",
                    f"data is {size} bytes, over the limit of {self.max_bytes}",
                )
            stored = data
        elif data is None or isinstance(data, dict):
            try:
                stored = encode_bag(
                    "data",
                    data,
                    self.max_bytes,
                    max_properties=self.max_properties,
                    max_depth=self.max_depth,
                )
            except BagError as exc:
                code = "MessageSizeTooBig" if exc.reason == "tooLarge" else "BadArgument"
                raise Refusal(400, code, str(exc)) from None
        else:
            raise Refusal(
                400,
                "BadArgument",
                f"data must be an object, a string or null, got {type(data).__name__}",
            )
        try:
            new_etag = await self.store(request).compare_and_set(
                key, stored, etag, max_bytes=self.max_bytes
            )
        except PreconditionFailed as exc:
            raise Refusal(412, "PreconditionFailed", str(exc)) from None
        except RecordTooLarge as exc:
            raise Refusal(400, "MessageSizeTooBig", str(exc)) from None
        return web.json_response({"data": data, "eTag": new_etag})

    async def delete_user(self, request: web.Request) -> web.Response:
        bot = self.bot_for(request)
        store = self.store(request)
        user = UserRef(bot, request.match_info.get("channelId"), request.match_info["userId"])
        await store.delete_user(user, store.clock.stamp())
        return web.json_response([])

    async def export(self, request: web.Request) -> web.Response:
        bot = self.bot_for(request)
        token = request.query.get("continuationToken") or None
        cursor = None
        if token:
            try:
                cursor = base64.urlsafe_b64decode(token.encode()).decode()
            except ValueError:  # not base64, not ASCII, or not UTF-8 inside
                raise Refusal(
                    400, "BadArgument", "continuationToken is not one this API issued"
                ) from None
        try:
            page = await self.store(request).export(
                bot, request.match_info["channelId"], cursor=cursor
            )
        except InvalidCursor:
            raise Refusal(
                400, "BadArgument", "continuationToken is not one this API issued"
            ) from None
        items = []
        for key, record in page.records:
            data = (
                join_bag(dict(props)).decode()
                if (props := effective(readable(record).props))
                else json.dumps(record.text)
            )
            items.append(
                {
                    "conversationId": key.conversation or None,
                    "userId": key.user or None,
                    "data": data,
                    "lastModified": datetime.fromtimestamp(record.modified_ms / 1000, UTC)
                    .isoformat()
                    .replace("+00:00", "Z"),
                }
            )
        next_token = (
            base64.urlsafe_b64encode(page.cursor.encode()).decode() if page.cursor else None
        )
        return web.json_response({"botStateData": items, "continuationToken": next_token})


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _wrap(api: _StateApi, handler: Handler, v1: bool) -> Handler:
    async def respond(request: web.Request) -> web.StreamResponse:
        unreadable = await unreadable_body(request)
        response = await _answer(api, handler, request, unreadable, v1)
        if unreadable is not None and unreadable.close_connection:
            response.force_close()
        return response

    return respond


async def _answer(
    api: _StateApi, handler: Handler, request: web.Request, unreadable: BodyError | None, v1: bool
) -> web.StreamResponse:
    try:
        api.bot_for(request)  # credentials first: a stranger learns nothing more
        if unreadable is not None:
            raise Refusal(unreadable.status, unreadable.code, str(unreadable))
        return await handler(request)
    except Refusal as exc:
        response = _error(exc.status, exc.code, str(exc), v1)
        if exc.status == 405:
            response.headers[hdrs.ALLOW] = str(exc).rpartition(": ")[2]
        return response
    except StoreUnavailable as exc:
        logger.error("state store unavailable: %s", exc)
        return _error(503, "ServiceUnavailable", f"the state store is unavailable: {exc}", v1)
    except web.HTTPException:
        raise
    except Exception as exc:  # a fault of ours must not become a bare 500
        log_internal_error("the state API", exc)
        return _error(500, "InternalError", f"{type(exc).__name__}: {exc}", v1)


def _error(status: int, code: str, message: str, v1: bool) -> web.Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if v1:
        error["statusCode"] = status
    headers = {hdrs.WWW_AUTHENTICATE: 'Basic realm="inline_state"'} if status == 401 else None
    return web.json_response({"error": error}, status=status, headers=headers)


def add_state_api(
    app: web.Application,
    *,
    secret: str | None = None,
    bot_id: str | None = None,
    credentials: Mapping[str, str] | None = None,
    app_id: str | None = None,
    no_auth: bool = False,
    store: str | Store | None = None,
    prefix: str = "",
    max_bytes: int = DEFAULT_MAX_BAG_BYTES,
    max_properties: int = DEFAULT_MAX_PROPERTIES,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_id_length: int = DEFAULT_MAX_ID_LENGTH,
) -> None:
    """Serve the v1 and v3 Bot State REST API on ``app``, over the cookie path's records.

    Every request needs ``Authorization: Bearer <secret>`` or HTTP Basic
    ``appId:<secret>`` (``app_id``, when given, must match). A credential maps to one
    bot id, the bot's channel account id (the ``recipient.id`` the cookie path keys
    by): ``secret`` + ``bot_id`` for one bot, or ``credentials={secret: bot_id}``.
    ``no_auth=True`` (with ``bot_id``) skips credentials but answers loopback clients
    only. ``store`` defaults to the one ``setup()`` gave the app. The limits are the
    middleware's (``max_bytes`` is its ``max_bag_bytes``).
    """
    api = _StateApi(
        store,
        Credentials(
            secret=secret,
            bot_id=bot_id,
            credentials=credentials,
            no_auth=no_auth,
            what="the state API",
        ),
        app_id,
        max_bytes,
        max_properties,
        max_depth,
        max_id_length,
    )
    api.slot.mount(app)
    prefix = prefix.rstrip("/")
    kinds: dict[str, Kind] = {
        "/users/{userId}": "user",
        "/conversations/{conversationId}": "conversation",
        "/conversations/{conversationId}/users/{userId}": "private",
    }
    allowed: dict[str, list[str]] = {}
    for method, path in ROUTES:
        v1 = path.startswith(V1)
        tail = path.removeprefix(V1 if v1 else V3)
        handler: Handler
        if tail == "/exportBotStateData":
            handler = api.export
        elif method == "DELETE":
            handler = api.delete_user
        else:
            kind = kinds[tail]
            verb = api.get if method == "GET" else api.post
            handler = _bind(verb, kind)
        # An id is any run of characters but "/" (aiohttp's default also refuses {}).
        pattern = re.sub(r"\{(\w+)\}", r"{\1:[^/]+}", prefix + path)
        app.router.add_route(method, pattern, _wrap(api, handler, v1))
        allowed.setdefault(pattern, []).append(method)
    for pattern, methods in allowed.items():
        # Any other method: a JSON 405 (aiohttp's own is text, and skips reading the body).
        app.router.add_route(
            "*", pattern, _wrap(api, not_allowed(methods), pattern.startswith(prefix + V1))
        )


def _bind(verb: Callable[[web.Request, Kind], Awaitable[web.Response]], kind: Kind) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return await verb(request, kind)

    return handler
