"""Inline state for bots on botbuilder-python (Bot Framework SDK v4).

Install with ``pip install 'inline_state[botbuilder]'``. Tested on botbuilder 4.17.1.
One call wraps an existing bot's aiohttp app and adapter::

    app = web.Application(middlewares=[aiohttp_error_middleware])
    inline_state.botbuilder.setup(app, ADAPTER, "sqlite:///state.db")

A handler reads ``turn_context.activity.botUserData`` (or the typed helpers such as
``inline_state.get_user_data(turn_context.activity, "name")``) and sets bags on its
replies. Replies returned inline (``deliveryMode: expectReplies``) are handled by the
server middleware. botbuilder POSTs other replies through msrest's requests-based
sender, which no aiohttp client middleware sees, so a botbuilder ``Middleware``
(:class:`PostedReplies`) strips their bags as they are sent and writes them when the
turn ends without an error.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

try:
    from botbuilder.core import InvokeResponse, Middleware, TurnContext
    from botbuilder.integration.aiohttp import CloudAdapter
    from botbuilder.schema import Activity, DeliveryModes, ExpectedReplies
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "inline_state.botbuilder needs botbuilder-python: pip install 'inline_state[botbuilder]'"
    ) from error

from ._change import Change
from ._engine import Engine
from ._errors import BagError, StoreUnavailable
from ._message import BAG_FIELDS, Shape
from ._posted import PostedTarget
from ._sdk import SdkSwitchError, is_request_turn, switch_failed
from ._server import InlineStateMiddleware
from ._setup import setup as setup_middleware
from ._turn import current_turn, outside_turn

__all__ = [
    "ExpectRepliesCloudAdapter",
    "PostedReplies",
    "SdkSwitchError",
    "enable",
    "setup",
    "verify",
]

logger = logging.getLogger("inline_state")
_DISTRIBUTION = "botbuilder-schema"
_TESTED = "4.17.1"


def enable() -> None:
    """Let botbuilder's ``Activity`` carry the bag fields: a process-wide switch.

    msrest models keep unknown fields only in ``additional_properties``, which they
    never serialize, so a bag neither reaches the bot as an attribute nor leaves on a
    reply. This adds the three fields, under their wire names, to
    ``Activity._attribute_map`` (with a class default of None, so activities built
    without them still serialize). Idempotent. Raises SdkSwitchError when the installed
    SDK still drops the fields afterwards.
    """
    for field in BAG_FIELDS:
        Activity._attribute_map[field] = {"key": field, "type": "object"}
        if not hasattr(Activity, field):
            setattr(Activity, field, None)
    verify()


def verify() -> None:
    """Raise SdkSwitchError unless a bag survives every path an activity takes.

    The paths: deserializing an incoming activity, serializing a reply (what the
    connector client POSTs) and the ``ExpectedReplies`` body.
    """
    bag = {"probe": 1}
    try:
        incoming = Activity().deserialize({"type": "message", BAG_FIELDS[0]: bag})
        if getattr(incoming, BAG_FIELDS[0], None) != bag:
            raise switch_failed(_DISTRIBUTION, _TESTED, "Activity drops an incoming bag")
        reply = Activity(type="message")
        for field in BAG_FIELDS:
            setattr(reply, field, bag)
        posted = reply.serialize()
        inline = ExpectedReplies(activities=[reply]).serialize()["activities"][0]
    except SdkSwitchError:
        raise
    except Exception as error:  # msrest raises its own SerializationError family
        raise switch_failed(_DISTRIBUTION, _TESTED, f"{type(error).__name__}: {error}") from error
    for field in BAG_FIELDS:
        if posted.get(field) != bag:
            raise switch_failed(_DISTRIBUTION, _TESTED, f"a serialized reply drops {field}")
        if inline.get(field) != bag:
            raise switch_failed(_DISTRIBUTION, _TESTED, f"ExpectedReplies drops {field}")


class PostedReplies(Middleware):  # type: ignore[misc]  # botbuilder is untyped
    """botbuilder middleware for replies the adapter POSTs to the channel.

    Each reply's (or updated activity's) bags are validated and stripped as it is sent
    (a bad bag raises BagError before anything leaves); the changes are written when the
    turn (or a proactive ``continue_conversation`` callback) ends without an exception.
    botbuilder sends only after every send handler has returned, so a handler cannot
    wait for the channel's answer: a bot that catches a failed send and carries on still
    has that reply's bags written. ``expectReplies`` turns are left to the server
    middleware, which sees the replies in the HTTP response. A proactive turn for
    another user or conversation, run while a request is handled, runs outside that
    request's turn.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def on_turn(self, context: TurnContext, logic: Callable[[], Awaitable[Any]]) -> None:
        if context.activity.delivery_mode == DeliveryModes.expect_replies:
            await logic()
            return
        if is_request_turn(context.activity):
            await self._posting_turn(context, logic)
            return
        with outside_turn():
            await self._posting_turn(context, logic)

    async def _posting_turn(
        self, context: TurnContext, logic: Callable[[], Awaitable[Any]]
    ) -> None:
        pending: list[Change] = []

        async def strip_sent(
            _context: TurnContext, activities: list[Activity], send: Callable[[], Awaitable[Any]]
        ) -> Any:
            pending.extend(await self._changes_of(activities))
            return await send()

        async def strip_updated(
            _context: TurnContext, activity: Activity, send: Callable[[], Awaitable[Any]]
        ) -> Any:
            pending.extend(await self._changes_of([activity]))
            return await send()

        context.on_send_activities(strip_sent)
        context.on_update_activity(strip_updated)
        await logic()
        try:
            await self.engine.commit(pending)
        except (BagError, StoreUnavailable) as exc:
            # The replies have gone; raising would fail a turn the user already saw.
            logger.error("inline_state: replies were delivered, their bags not stored: %s", exc)

    async def _changes_of(self, activities: list[Activity]) -> list[Change]:
        engine = self.engine
        turn = current_turn()
        changes: list[Change] = []
        for activity in activities:
            if all(getattr(activity, field, None) is None for field in BAG_FIELDS):
                continue
            msg = activity.serialize()
            conversation = activity.conversation.id if activity.conversation else None
            target = PostedTarget(Shape.V3, conversation, activity.reply_to_id)
            changes.extend(await engine.posted_changes(msg, target, turn))
            if not engine.keep_fields:
                for field in BAG_FIELDS:
                    setattr(activity, field, None)
        return changes


class ExpectRepliesCloudAdapter(CloudAdapter):  # type: ignore[misc]  # botbuilder is untyped
    """botbuilder's CloudAdapter with ``expectReplies`` working (botbuilder 4.17.1).

    As shipped, ``_process_turn_results`` serializes ExpectedReplies to a dict and
    ``process`` then serializes it again, which fails: every expectReplies turn answers
    HTTP 500. This returns the model, so it is serialized once.
    """

    def _process_turn_results(self, context: TurnContext) -> InvokeResponse:
        if context.activity.delivery_mode == DeliveryModes.expect_replies:
            return InvokeResponse(
                status=200, body=ExpectedReplies(activities=context.buffered_reply_activities)
            )
        return super()._process_turn_results(context)


def setup(
    app: web.Application,
    adapter: Any,
    store: Any = "memory://",
    **options: Any,
) -> InlineStateMiddleware:
    """Add inline state to a botbuilder app and its adapter.

    Calls :func:`enable`, then ``inline_state.setup(app, store, **options)``, and adds
    :class:`PostedReplies` to the adapter (``adapter.use``). Returns the middleware.
    """
    enable()
    state = setup_middleware(app, store, **options)
    adapter.use(PostedReplies(state.engine))
    return state
