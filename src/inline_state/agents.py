"""Inline state for bots on the Microsoft 365 Agents SDK for Python.

Install with ``pip install 'inline_state[agents]'``. Tested on
microsoft-agents-hosting-aiohttp 1.9.0. One call wraps an existing SDK app::

    APP = Application(middlewares=[jwt_authorization_middleware])
    inline_state.agents.setup(APP, ADAPTER, "sqlite:///state.db")

Then a handler reads ``context.activity.botUserData`` (or the typed helpers such as
``inline_state.get_user_data(context.activity, "name")``) and sets bags on its replies
(``inline_state.set_user_data(reply, "name", value)``). Replies returned inline
(``deliveryMode: expectReplies``) are handled by the server middleware; replies the
adapter POSTs to ``serviceUrl`` go through the client middleware, which this module puts
into every ``ConnectorClient`` the adapter creates.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import ClientSession, web

try:
    from microsoft_agents.activity import Activity, ExpectedReplies
    from microsoft_agents.hosting.core import (
        ChannelServiceClientFactoryBase,
        ClaimsIdentity,
        TurnContext,
    )
    from microsoft_agents.hosting.core.connector import (
        ConnectorClient,
        ConnectorClientBase,
        UserTokenClientBase,
    )
    from microsoft_agents.hosting.core.connector.mcs import MCSConnectorClient
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "inline_state.agents needs the Microsoft 365 Agents SDK: pip install 'inline_state[agents]'"
    ) from error

from ._client import InlineStateClientMiddleware
from ._engine import Engine
from ._message import BAG_FIELDS
from ._sdk import SdkSwitchError, is_request_turn, switch_failed
from ._server import InlineStateMiddleware
from ._setup import setup as setup_middleware
from ._turn import outside_turn

__all__ = ["SdkSwitchError", "enable", "setup", "verify"]

_DISTRIBUTION = "microsoft-agents-activity"
_TESTED = "1.9.0"


def enable() -> None:
    """Let the SDK's ``Activity`` carry the bag fields: a process-wide switch.

    ``Activity`` is a pydantic model without an ``extra`` setting, so it drops unknown
    fields: an incoming ``botUserData`` never reaches the bot, and a reply cannot carry
    one. This sets ``extra="allow"`` on ``Activity`` and rebuilds it and
    ``ExpectedReplies`` (which embeds its schema), so activities keep unknown fields in
    ``model_extra``: a mistyped attribute (``activity.txt = ...``) is now kept and sent
    too. Other models that embed an Activity and were built before (the
    ``ConversationParameters`` of ``create_conversation``, transcripts, the SDK's stored
    sign-in state) still drop bags, which keeps them off those requests. Idempotent.
    Raises SdkSwitchError when the installed SDK still drops the fields afterwards.
    """
    if Activity.model_config.get("extra") != "allow":
        Activity.model_config["extra"] = "allow"
        Activity.model_rebuild(force=True)
        ExpectedReplies.model_rebuild(force=True)
    verify()


def verify() -> None:
    """Raise SdkSwitchError unless a bag survives every path an activity takes.

    The paths: parsing an incoming activity, the ``expectReplies`` body, and the JSON a
    ``ConnectorClient`` POSTs (``exclude_unset``/``exclude_none`` dumps).
    """
    bag = {"probe": 1}
    try:
        incoming = Activity.model_validate({"type": "message", BAG_FIELDS[0]: bag})
        if getattr(incoming, BAG_FIELDS[0], None) != bag:
            raise switch_failed(_DISTRIBUTION, _TESTED, "Activity drops an incoming bag")
        reply = Activity(type="message")
        for field in BAG_FIELDS:
            setattr(reply, field, bag)
        posted = reply.model_dump(by_alias=True, exclude_unset=True, exclude_none=True, mode="json")
        inline = ExpectedReplies(activities=[reply]).model_dump(
            by_alias=True, exclude_unset=True, mode="json"
        )["activities"][0]
    except (TypeError, ValueError, AttributeError) as error:  # pydantic errors are ValueErrors
        raise switch_failed(_DISTRIBUTION, _TESTED, f"{type(error).__name__}: {error}") from error
    for field in BAG_FIELDS:
        if posted.get(field) != bag:
            raise switch_failed(_DISTRIBUTION, _TESTED, f"a POSTed reply drops {field}")
        if inline.get(field) != bag:
            raise switch_failed(_DISTRIBUTION, _TESTED, f"ExpectedReplies drops {field}")


class _ClientsThroughInlineState:
    """The adapter's client factory, with inline state's client middleware on every
    ConnectorClient it makes, so replies POSTed to ``serviceUrl`` persist their bags."""

    def __init__(self, inner: ChannelServiceClientFactoryBase, engine: Engine):
        self.inner = inner
        self.client_middleware = InlineStateClientMiddleware(engine)

    async def create_connector_client(
        self,
        context: TurnContext | None,
        claims_identity: ClaimsIdentity,
        service_url: str,
        audience: str,
        scopes: list[str] | None = None,
        use_anonymous: bool = False,
    ) -> ConnectorClientBase:
        client = await self.inner.create_connector_client(
            context, claims_identity, service_url, audience, scopes, use_anonymous
        )
        # The SDK builds the session itself; a session with the middleware replaces it,
        # keeping its headers (the Authorization token among them).
        if isinstance(client, ConnectorClient):
            original = client.client
            base_url = service_url if service_url.endswith("/") else service_url + "/"
            session = ClientSession(
                base_url=base_url, headers=original.headers, middlewares=(self.client_middleware,)
            )
            await original.close()
            return type(client)(endpoint=base_url, token="", session=session)
        if isinstance(client, MCSConnectorClient):
            # Copilot Studio's connector POSTs to the bare serviceUrl, not a reply path:
            # the client middleware strips bags there (with a warning), never sends them.
            await client.close()  # type: ignore[no-untyped-call]  # untyped in the SDK
            return MCSConnectorClient(
                endpoint=service_url, client=ClientSession(middlewares=(self.client_middleware,))
            )
        return client

    async def create_user_token_client(
        self,
        context: TurnContext,
        claims_identity: ClaimsIdentity,
        use_anonymous: bool = False,
    ) -> UserTokenClientBase:
        return await self.inner.create_user_token_client(context, claims_identity, use_anonymous)


class _ProactiveTurns:
    """Agents SDK middleware: an SDK turn for other records than the request's (a
    proactive ``continue_conversation`` run while handling a request) runs outside the
    request's turn, so its replies neither start from nor are diffed against this
    user's bags."""

    async def on_turn(
        self, context: TurnContext, logic: Callable[[TurnContext], Awaitable[Any]]
    ) -> None:
        if is_request_turn(context.activity):
            await logic(context)
            return
        with outside_turn():
            await logic(context)


def setup(
    app: web.Application,
    adapter: Any,
    store: Any = "memory://",
    **options: Any,
) -> InlineStateMiddleware:
    """Add inline state to an Agents SDK app and its ``CloudAdapter``.

    Calls :func:`enable`, then ``inline_state.setup(app, store, **options)`` (add it
    after the SDK's ``jwt_authorization_middleware`` so unauthenticated requests never
    load state), routes the adapter's ConnectorClients through the returned
    middleware's client middleware, and adds an adapter middleware that runs proactive
    turns for other users outside the request's turn. Returns the middleware. An adapter
    serves one inline state: a second call with the same adapter raises ValueError.
    """
    factory = getattr(adapter, "_channel_service_client_factory", None)
    if factory is None:
        raise switch_failed(
            "microsoft-agents-hosting-core",
            _TESTED,
            f"{type(adapter).__name__} has no _channel_service_client_factory to route "
            "POSTed replies through",
        )
    if isinstance(factory, _ClientsThroughInlineState):
        raise ValueError("this adapter already sends through an inline state middleware")
    enable()
    state = setup_middleware(app, store, **options)
    adapter._channel_service_client_factory = _ClientsThroughInlineState(factory, state.engine)
    adapter.use(_ProactiveTurns())
    return state
