"""The aiohttp client middleware: bags on replies a bot POSTs to the channel.

v3 bots POST replies (and proactive messages) to
``{serviceUrl}/v3/conversations/{conversationId}/activities[/{replyToId}]`` and PUT
updated activities to ``.../activities/{activityId}``; v1 bots POSTed later replies to
``/bot/v1.0/messages``. The middleware strips the bags before the request leaves and
persists them only after the channel answered 2xx. Bags on a POST or PUT to any other
path (a Teams batch send, say) belong to no one record: they are stripped, with a
warning, and not persisted.
"""

from __future__ import annotations

import logging

from aiohttp import ClientHandlerType, ClientRequest, ClientResponse, hdrs, payload
from aiohttp.helpers import parse_mimetype

from . import _body
from ._body import NOT_JSON, BodyError
from ._engine import Engine
from ._errors import BagError, StoreUnavailable
from ._message import lifted, may_hide_bags, strip_nested_bags
from ._posted import PendingWrite, has_bags, posted_target
from ._turn import current_turn

__all__ = ["InlineStateClientMiddleware"]

logger = logging.getLogger("inline_state")
_SENDING = frozenset({hdrs.METH_POST, hdrs.METH_PUT})


class _StrippedBody(payload.BytesPayload):
    """The stripped body, carrying its pending write across redirects and retries.

    aiohttp hands the same payload to the request it builds for a 307/308 redirect, so
    the write survives the hop. The request keeps its own Content-Type (and charset).
    """

    def __init__(
        self, value: bytes, pending: PendingWrite, content_type: str = "application/json"
    ) -> None:
        super().__init__(value, content_type=content_type)
        self.pending = pending


class InlineStateClientMiddleware:
    """Persists the bags of replies POSTed through a ``ClientSession``, then strips them.

    Get it from the server middleware (``setup(app).client``), or build it on the same
    engine (``InlineStateClientMiddleware(mw.engine)``), so both share the store, the
    clock and the options: ``ClientSession(middlewares=(mw.client,))``. A reply sent
    during a turn is diffed against that turn's played-back bags, exactly like an inline
    reply; a proactive message, outside any turn, replaces whole bags. Invalid bags
    raise BagError before anything is sent. When the channel accepted a reply but its
    bag, merged with the stored record, turns out over the size limit, the reply has
    gone: the response is returned as usual, the record is left as it was, and the
    error is logged (a raise would make the bot send the message again).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def __call__(self, request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        body = request.body
        if isinstance(body, _StrippedBody):
            pending: PendingWrite | None = body.pending  # a redirect or retry of our request
        else:
            pending = await self._strip(request)
        response = await handler(request)
        if pending is not None and 200 <= response.status < 300:
            try:
                await pending.apply(self.engine.commit)
            except (BagError, StoreUnavailable) as exc:
                # Raising now would make the bot send the message again.
                logger.error(
                    "inline_state: the reply was delivered, its bag was not stored: %s", exc
                )
        return response

    async def _strip(self, request: ClientRequest) -> PendingWrite | None:
        body = request.body
        # Bytes bodies (json=, data=bytes/str) are read; a streamed body (a file, an async
        # generator) is sent as it is: reading it would consume it.
        if request.method not in _SENDING or not isinstance(body, payload.BytesPayload):
            return None
        raw = await body.as_bytes()
        if not may_hide_bags(raw):
            return None
        engine = self.engine
        charset = _charset(request.headers.get(hdrs.CONTENT_TYPE, ""))
        try:
            msg, exact = _body.parse_body(raw, charset, engine.max_depth)
        except BodyError as exc:
            msg, exact, problem = NOT_JSON, False, str(exc)
        else:
            problem = "it is not valid JSON"
        if msg is NOT_JSON:
            # It may carry a bag we cannot strip: it must not leave.
            raise BagError(
                "body",
                "unreadable",
                f"the request to {request.url.path} was not sent: {problem}, and it names a"
                " bag field",
                limit=engine.max_bag_bytes,
            )
        target = posted_target(request.url.raw_path) if isinstance(msg, dict) else None
        reply = lifted(msg) if target is not None else None  # channelData.inlineState too
        if target is not None and reply is not None and has_bags(reply):
            changes = await engine.posted_changes(reply, target, current_turn())
        elif strip_nested_bags(msg, dry_run=True):
            # A batch ({"activity": ...}, {"activities": [...]}, a list): the bags belong
            # to no one record. They never leave, and are not stored.
            logger.warning(
                "inline_state: bags on %s %s are stripped and not persisted: not a reply path",
                request.method,
                request.url.path,
            )
            changes = []
        else:
            return None
        pending = PendingWrite(changes)
        if not engine.keep_fields:
            strip_nested_bags(msg, dry_run=False)
            await request.update_body(
                _StrippedBody(_body.encode(msg, charset, exact=exact), pending)
            )
        else:
            await request.update_body(_StrippedBody(raw, pending))
        return pending


def _charset(content_type: str) -> str | None:
    return parse_mimetype(content_type).parameters.get("charset") or None
