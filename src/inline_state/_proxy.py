"""A state proxy: inline state for a bot in any language, without changing a line of it.

It plays the connector's part in front of the bot: incoming messages get their bags
played back and are forwarded to the bot; the bot's inline replies are persisted and
stripped on the way back. Replies the bot POSTs to the connector itself (v1
``/bot/v1.0/messages``, v3 ``/v3/conversations/{id}/activities[/{replyToId}]``) and
activities it updates (PUT ``.../activities/{activityId}``) are persisted, stripped and
forwarded to the channel; every other ``/v3/...`` call (members, createConversation...)
is forwarded as it is, bags in its body stripped and not stored. All of them go only to
a configured channel URL or to a serviceUrl on the allow-list (the body's, or the one
the conversation's last incoming message named): never to a URL that is not on it.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import unquote

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict
from yarl import URL

from . import _body
from ._body import NOT_JSON, BodyError
from ._engine import Engine
from ._errors import BagError, StoreUnavailable, TurnError
from ._http import (
    ENGINE_KEY,
    STORE_KEY,
    body_error_response,
    internal_error_response,
    json_error,
    read_body,
    turn_error_response,
    unavailable_response,
)
from ._message import Shape, account_id, lifted, may_hide_bags, strip_nested_bags
from ._posted import PendingWrite, PostedTarget, has_bags
from ._server import InlineStateMiddleware, get_turn
from ._turn import Turn
from .stores import Store

__all__ = ["proxy_app"]

T = TypeVar("T")

logger = logging.getLogger("inline_state")
_FORWARDED_HEADERS = (hdrs.AUTHORIZATION, hdrs.CONTENT_TYPE, hdrs.ACCEPT)
_SESSION_KEY = web.AppKey("inline_state.proxy_session", aiohttp.ClientSession)


class _Allowed:
    """serviceUrl allow-list: same scheme, host and port, and a path under the entry's."""

    def __init__(self, entries: Sequence[str]) -> None:
        self.entries = [URL(entry) for entry in entries]
        for entry in self.entries:
            if not entry.is_absolute() or entry.scheme not in ("http", "https"):
                raise ValueError(f"allow-list entries must be http(s) URLs, got {entry}")

    def __contains__(self, candidate: str) -> bool:
        try:
            url = URL(candidate)
        except (ValueError, TypeError):
            return False
        if not url.is_absolute():
            return False
        for entry in self.entries:
            prefix = entry.path.rstrip("/") + "/"
            if (
                url.scheme == entry.scheme
                and (url.host or "").lower() == (entry.host or "").lower()
                and url.port == entry.port
                and (url.path + "/").startswith(prefix)
            ):
                return True
        return False


class _Proxy:
    def __init__(
        self,
        engine: Engine,
        upstream: str,
        channel: str | None,
        allowed: _Allowed,
        public_url: str | None,
        timeout: float,
        remembered_turns: int,
    ) -> None:
        self.engine = engine
        self.upstream = upstream
        self.channel = channel.rstrip("/") if channel else None
        self.allowed = allowed
        self.public_url = public_url
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.turns: OrderedDict[str, Turn] = OrderedDict()
        # The serviceUrl each conversation's last incoming message named (before any
        # rewrite): where a call about that conversation goes when its body names none.
        self.service_urls: OrderedDict[str, str] = OrderedDict()
        self.remembered_turns = remembered_turns

    async def session_ctx(self, app: web.Application) -> AsyncIterator[None]:
        # Bodies are decompressed: a bot's gzipped reply is read (and its bags handled), and
        # what is forwarded is plain bytes under their Content-Type.
        async with aiohttp.ClientSession(timeout=self.timeout) as session:
            app[_SESSION_KEY] = session
            yield

    def remember(self, message: dict[str, Any], turn: Turn) -> Callable[[], None]:
        """Keep the turn (for replies POSTed during it) and the conversation's serviceUrl
        if it is on the allow-list; return what takes the serviceUrl back (a message the
        bot refused, unauthenticated say, must not choose where calls go)."""
        activity_id = message.get("id")
        if isinstance(activity_id, str) and activity_id:
            _remember(self.turns, activity_id, turn, self.remembered_turns)
        conversation = account_id(message.get("conversation"))
        service_url = message.get("serviceUrl")
        if conversation is None or not isinstance(service_url, str):
            return _nothing
        if self.channel is not None or service_url not in self.allowed:
            return _nothing
        before = self.service_urls.get(conversation)
        _remember(self.service_urls, conversation, service_url, self.remembered_turns)

        def forget() -> None:
            if before is None:
                self.service_urls.pop(conversation, None)
            else:
                self.service_urls[conversation] = before

        return forget

    async def _send(
        self, request: web.Request, url: str, body: bytes, who: str, method: str = "POST"
    ) -> web.Response:
        headers = {
            name: request.headers[name] for name in _FORWARDED_HEADERS if name in request.headers
        }
        session = request.app[_SESSION_KEY]
        try:
            async with session.request(
                method, URL(url, encoded=True), data=body, headers=headers
            ) as answer:
                payload = await answer.read()
                # Its headers as they came (Retry-After, Location...), but those of the
                # hop and of the encoding: the body is decompressed and sent again.
                kept = CIMultiDict(
                    (name, value)
                    for name, value in answer.headers.items()
                    if name.lower() not in _HOP_HEADERS
                )
                return web.Response(body=payload, status=answer.status, headers=kept)
        except TimeoutError:
            return json_error(
                504, "GatewayTimeout", f"the {who} did not answer within {self.timeout.total} s"
            )
        except aiohttp.ClientError as exc:
            return json_error(
                502, "BadGateway", f"the {who} at {url} failed: {exc or type(exc).__name__}"
            )

    async def incoming(self, request: web.Request) -> web.Response:
        """A message from the channel: forward it (bags played back) to the bot."""
        body = await request.read()
        turn = get_turn(request)
        forget = _nothing
        if turn is not None:
            message = turn.message
            forget = self.remember(message, turn)
            if self.public_url is not None and isinstance(message.get("serviceUrl"), str):
                message["serviceUrl"] = self.public_url
                body = _body.encode(message, request.charset)
        answer = await self._send(request, self.upstream, body, "bot")
        if not 200 <= answer.status < 300:
            forget()
        return answer

    async def posted(self, request: web.Request) -> web.Response:
        """A reply the bot POSTed to the connector: persist, strip, forward to the channel."""
        if _dot_segments(request.rel_url.raw_path):
            return _bad_path()
        try:
            msg = _body.parse(await read_body(request), request.charset, self.engine.max_depth)
        except BodyError as exc:
            return body_error_response(exc)
        if msg is NOT_JSON:
            return json_error(400, "BadSyntax", "the reply is not valid JSON in its charset")
        if not isinstance(msg, dict):
            return json_error(400, "BadArgument", "the reply must be a JSON object")
        info = request.match_info
        if request.method == hdrs.METH_PUT:
            # The URL names the activity being updated, not the one it answers: the turn
            # is the body's replyToId, if any (else it is proactive).
            target = PostedTarget(Shape.V3, info["conversationId"])
            reply_to = msg.get("replyToId")
        elif "conversationId" in info:
            target = PostedTarget(Shape.V3, info["conversationId"], info.get("activityId"))
            reply_to = target.reply_to or msg.get("replyToId")
        else:
            target = PostedTarget(Shape.V1)
            reply_to = msg.get("replyToMessageId")
        destination = self.destination(request, msg)
        if destination is None:
            return _not_allowed(msg)
        pending = PendingWrite([])
        reply = lifted(msg)  # channelData.inlineState too
        if has_bags(reply):
            turn = self.turns.get(reply_to) if isinstance(reply_to, str) else None
            try:
                pending.changes = await self.engine.posted_changes(reply, target, turn)
            except TurnError as exc:
                return turn_error_response(exc)
            except StoreUnavailable as exc:
                return unavailable_response(exc)
        if not self.engine.keep_fields:
            # Those of a history's activities too: they belong to no turn, never leave.
            strip_nested_bags(msg, dry_run=False)
        answer = await self._send(
            request, destination, _body.encode(msg, request.charset), "channel", request.method
        )
        if 200 <= answer.status < 300:
            try:
                await pending.apply(self.engine.commit)
            except (BagError, StoreUnavailable) as exc:
                # The channel has the reply: answer as it did (a 5xx would make the bot send
                # it again); the record stays as it was.
                logger.error(
                    "inline_state proxy: the reply was delivered, its bag was not stored: %s",
                    exc,
                )
        return answer

    async def forward(self, request: web.Request) -> web.Response:
        """Any other connector call the bot makes: forwarded to the channel as it is, bags
        in its body (a createConversation's activity, say) stripped and not stored."""
        if _dot_segments(request.rel_url.raw_path):
            return _bad_path()
        try:
            raw = await read_body(request)
        except BodyError as exc:
            return body_error_response(exc)
        msg: Any = None
        if raw:
            try:
                msg = _body.parse(raw, request.charset, self.engine.max_depth)
            except BodyError as exc:
                if may_hide_bags(raw):
                    return body_error_response(exc)
            if msg is NOT_JSON and may_hide_bags(raw):
                return json_error(
                    400,
                    "UnreadableBody",
                    "the body is not valid JSON in its charset and names a bag field;"
                    " nothing was forwarded",
                )
            if strip_nested_bags(msg, dry_run=True):
                logger.warning(
                    "inline_state proxy: bags on %s %s are stripped and not persisted:"
                    " not a reply path",
                    request.method,
                    request.path,
                )
                if not self.engine.keep_fields:
                    strip_nested_bags(msg, dry_run=False)
                    raw = _body.encode(msg, request.charset)
        destination = self.destination(request, msg if isinstance(msg, dict) else None)
        if destination is None:
            return _not_allowed(msg if isinstance(msg, dict) else None)
        return await self._send(request, destination, raw, "channel", request.method)

    def destination(self, request: web.Request, msg: dict[str, Any] | None) -> str | None:
        """Where a call to the connector goes: the channel URL when one is configured,
        else the body's serviceUrl or the one the conversation in the path last came
        from, whichever is on the allow-list first."""
        path = request.rel_url.raw_path_qs
        if self.channel is not None:
            return self.channel + path
        conversation = request.match_info.get("conversationId")
        if conversation is None:
            match = _CONVERSATION.match(request.rel_url.raw_path)
            conversation = unquote(match[1]) if match else None
        candidates = [
            msg.get("serviceUrl") if msg is not None else None,
            self.service_urls.get(conversation) if conversation is not None else None,
        ]
        for service_url in candidates:
            if isinstance(service_url, str) and service_url in self.allowed:
                return service_url.rstrip("/") + path
        return None


_CONVERSATION = re.compile(r"/v3/conversations/([^/?]+)")
_HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "content-encoding",
        "date",
        "server",
    }
)


def _nothing() -> None:
    pass


def _dot_segments(raw_path: str) -> bool:
    """True when a path holds a ``.`` or ``..`` segment, spelled out or percent-encoded:
    resolved on the way out, it would leave the channel URL it is checked against."""
    return any(unquote(segment) in (".", "..") for segment in raw_path.split("/"))


def _bad_path() -> web.Response:
    return json_error(400, "BadPath", "the path holds a '.' or '..' segment; nothing was forwarded")


def _remember(table: OrderedDict[str, T], key: str, value: T, kept: int) -> None:
    table[key] = value
    table.move_to_end(key)
    while len(table) > kept:
        table.popitem(last=False)


def _not_allowed(msg: dict[str, Any] | None) -> web.Response:
    service_url = msg.get("serviceUrl") if msg is not None else None
    return json_error(
        403,
        "ServiceUrlNotAllowed",
        f"serviceUrl {service_url!r} is not on the allow-list, no serviceUrl on it is known"
        " for this conversation, and no channel URL is configured; nothing was forwarded",
    )


def _guarded(
    handler: Callable[[web.Request], Awaitable[web.Response]],
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def guarded(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except Exception as exc:  # a fault of ours must not become a bare 500
            return internal_error_response("the proxy", exc)

    return guarded


def proxy_app(
    *,
    upstream: str,
    store: str | Store = "memory://",
    channel: str | None = None,
    allow_service_urls: Sequence[str] = (),
    rewrite_service_url: str | None = None,
    timeout: float = 10.0,
    remembered_turns: int = 10_000,
    engine: Engine | None = None,
) -> web.Application:
    """The proxy's aiohttp app, on ``engine`` (by default ``Engine.create(store)``).

    ``upstream`` is the bot's messaging endpoint. POSTed replies and every other
    ``/v3/...`` call go to ``channel`` (a base URL) when set, else to a serviceUrl on
    ``allow_service_urls``: the body's, or the one the conversation last came from.
    ``rewrite_service_url`` (this proxy's public base URL) makes the bot POST its replies
    here; it breaks channels that check tokens against the serviceUrl. ``timeout``
    bounds every forwarded request: a silent bot gives 504, an unreachable one 502.
    """
    if rewrite_service_url is not None:
        logger.warning(
            "inline_state proxy: incoming serviceUrl is rewritten to %s; channels that check"
            " tokens against the serviceUrl will reject the bot's replies",
            rewrite_service_url,
        )
    app = web.Application()
    engine = engine if engine is not None else Engine.create(store)
    # Incoming messages: the server middleware on the same engine, mounted here.
    middleware = InlineStateMiddleware(engine)
    app.middlewares.append(middleware)
    app.cleanup_ctx.append(middleware.cleanup_ctx)
    app[ENGINE_KEY] = engine
    app[STORE_KEY] = engine.store
    proxy = _Proxy(
        engine,
        upstream,
        channel,
        _Allowed(allow_service_urls),
        rewrite_service_url,
        timeout,
        remembered_turns,
    )
    app.cleanup_ctx.append(proxy.session_ctx)
    app.router.add_post("/api/messages", _guarded(proxy.incoming))
    app.router.add_post("/bot/v1.0/messages", _guarded(proxy.posted))
    # Ids are any run of characters but "/" (aiohttp's default pattern also refuses {}).
    conversation = "/v3/conversations/{conversationId:[^/]+}/activities"
    app.router.add_post(conversation + "{slash:/?}", _guarded(proxy.posted))
    app.router.add_post(conversation + "/{activityId:[^/]+}{slash:/?}", _guarded(proxy.posted))
    app.router.add_put(conversation + "/{activityId:[^/]+}{slash:/?}", _guarded(proxy.posted))
    app.router.add_route("*", "/v3/{tail:.*}", _guarded(proxy.forward))  # everything else
    return app
