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
from typing import Any

from aiohttp import ClientHandlerType, ClientRequest, ClientResponse, hdrs, payload

from . import _body
from ._body import NOT_JSON, BodyError
from ._engine import Engine
from ._errors import BagError
from ._message import may_carry_bags, strip_bags
from ._posted import PendingWrite, has_bags, posted_target
from ._turn import current_turn

__all__ = ["InlineStateClientMiddleware"]

logger = logging.getLogger("inline_state")
_SENDING = frozenset({hdrs.METH_POST, hdrs.METH_PUT})


class _StrippedJson(payload.JsonPayload):
    """The stripped body, carrying its pending write across redirects and retries.

    aiohttp hands the same payload to the request it builds for a 307/308 redirect, so
    the write survives the hop; a JSON payload keeps ``application/json`` on the way.
    """

    def __init__(self, value: Any, pending: PendingWrite) -> None:
        super().__init__(value)
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
        if isinstance(body, _StrippedJson):
            pending: PendingWrite | None = body.pending  # a redirect or retry of our request
        else:
            pending = await self._strip(request)
        response = await handler(request)
        if pending is not None and 200 <= response.status < 300:
            try:
                await pending.apply(self.engine.commit)
            except BagError as exc:
                logger.error(
                    "inline_state: the reply was delivered, its bag was not stored: %s", exc
                )
        return response

    async def _strip(self, request: ClientRequest) -> PendingWrite | None:
        body = request.body
        if request.method not in _SENDING or not isinstance(body, payload.BytesPayload):
            return None
        raw = await body.as_bytes()
        if not may_carry_bags(raw):
            return None
        engine = self.engine
        try:
            msg = _body.parse(raw, None, engine.max_depth)
        except BodyError as exc:
            msg, problem = NOT_JSON, str(exc)
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
        if not isinstance(msg, dict) or not has_bags(msg):
            return None
        target = posted_target(request.url.raw_path)
        if target is None:
            logger.warning(
                "inline_state: bags on %s %s are stripped and not persisted: not a reply path",
                request.method,
                request.url.path,
            )
            changes = []
        else:
            changes = await engine.posted_changes(msg, target, current_turn())
        pending = PendingWrite(changes)
        if not engine.keep_fields:
            strip_bags(msg)
        await request.update_body(_StrippedJson(msg, pending))
        return pending
