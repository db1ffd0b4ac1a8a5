"""Incumbent baseline: Microsoft 365 Agents SDK for Python (microsoft-agents-* 1.9.x, the
maintained successor of botbuilder-python), shaped like the SDK's own samples
(microsoft/Agents samples/python/quickstart + persistent-state, and Agents-for-python
test_samples/app_style): AgentApplication[TurnState] on MemoryStorage, CloudAdapter +
MsalConnectionManager(**load_configuration_from_env(environ)), Authorization, served by
aiohttp through start_agent_process behind jwt_authorization_middleware.

State: the default TurnState (TurnState.with_storage) loads, per turn, a fresh
ConversationState (key "<channelId>/conversations/<conversation.id>") and UserState (key
"<channelId>/users/<from.id>") from the storage before the route handler runs, and
AgentApplication saves both after it (only if changed: a hash of str(state) is compared).
The handler keeps the user's turn count in user state and a conversation turn counter in
conversation state, like botbuilder_state.py and baseline.py:
`state.user.get_value("turns", lambda: 0)` / `set_value(...)`.

Differences from the samples, all needed to benchmark it over plain HTTP:
- auth: anonymous. The samples build everything from env vars (CONNECTIONS__SERVICE_CONNECTION__
  SETTINGS__CLIENTID etc.); here the only default is ...__SETTINGS__ANONYMOUS_ALLOWED=true and
  no CLIENTID, so jwt_authorization_middleware lets a request without an Authorization header
  through with an empty ClaimsIdentity (allow_anonymous) and no token is ever requested;
- callers send deliveryMode "expectReplies": the adapter buffers the replies and returns them
  in the HTTP body as {"activities": [...]} (HttpAdapterBase.process_request ->
  _process_turn_results -> ExpectedReplies.model_dump(by_alias, exclude_unset)). This works
  as shipped in 1.9.0; no adapter workaround is needed (unlike botbuilder 4.17.1);
- one reply per turn ("echo: <text> (turn <n>)"), no membersAdded welcome, so the work per
  turn matches baseline.py;
- errors are made loud: no AGENT_APP.error handler (so AgentApplication re-raises) and an
  adapter on_turn_error that logs and re-raises, so a failed turn is an HTTP 500 that wrk
  counts. With the samples' handlers (log + send an apology / "Exception caught" message) a
  failed expectReplies turn is still HTTP 200 (with {"activities": []} or an error message),
  which a throughput run cannot tell from success.

Workaround for an SDK bug (LoopbackCloudAdapter below): Activity.get_conversation_reference()
passes service_url=self.service_url explicitly to ConversationReference, whose field is
`service_url: NonEmptyString = None`; an explicit None fails validation. So in 1.9.0 an
incoming activity without "serviceUrl" (as sent by wrk/messages.lua and run.py's probe, and
accepted by botbuilder and baseline.py) can never be answered: TurnContext.send_activities()
raises "1 validation error for ConversationReference service_url" before anything is sent.
The adapter fills a placeholder serviceUrl in when the activity has none; it is never
contacted (expectReplies replies are buffered; the ConnectorClient is not even created).

Sample bug NOT copied (documented, not worked around): microsoft/Agents
samples/python/persistent-state does `(state.conversation.get("count") or 0) + 1` and
`state.conversation["count"] = count`. In 1.9.0 AgentState.get(x) treats x as a deprecated
turn_context argument and returns the whole state dict, and AgentState has no __setitem__,
so that sample fails with "TypeError: 'ConversationState' object does not support item
assignment" on its first message. This target uses get_value/set_value instead (the form
used by the SDK's own tests and other samples).

Defaults kept as shipped (they are part of what the SDK costs per turn):
- ApplicationOptions.start_typing_timer=True: every message turn starts a TypingIndicator task
  (first typing after 0.5 s, cancelled when the reply is sent);
- Authorization reads the sign-in state from storage on every message turn;
- a UserTokenClient (with its own aiohttp ClientSession) is created and closed per turn,
  even for expectReplies (the ConnectorClient is skipped for expectReplies).
Silenced: with anonymous claims UserTokenClient logs "App ID is not provided..." at WARNING
on every turn (a real deployment has an app id, so it would not); its logger is set to
ERROR so per-turn log I/O is not measured (like access_log=None in _serve.py).
"""
import logging
import sys
from os import environ

from aiohttp.web import Application, Request, Response

from microsoft_agents.activity import load_configuration_from_env
from microsoft_agents.authentication.msal import MsalConnectionManager
from microsoft_agents.hosting.aiohttp import (
    CloudAdapter,
    jwt_authorization_middleware,
    start_agent_process,
)
from microsoft_agents.hosting.core import (
    AgentApplication,
    Authorization,
    MemoryStorage,
    MessageFactory,
    TurnContext,
    TurnState,
)

import inline_state
import inline_state.agents

from _serve import serve

__doc__ += """
--inline-state (the `agents-inline` target): the same bot with its two counters in inline
state (inline_state.agents.setup on the same app and adapter, memory://) instead of
UserState/ConversationState. AgentApplication still loads its own (now empty) TurnState
scopes from MemoryStorage every turn, as shipped; skipping that (turn_state_factory=
TurnState) made no measurable difference.
"""

# Anonymous loopback benchmark: a service connection with no app id and anonymous allowed.
environ.setdefault("CONNECTIONS__SERVICE_CONNECTION__SETTINGS__ANONYMOUS_ALLOWED", "true")

PLACEHOLDER_SERVICE_URL = "http://127.0.0.1:9/"  # never contacted (see module doc)


class LoopbackCloudAdapter(CloudAdapter):
    """Workaround for the missing-serviceUrl crash in 1.9.0 (see module doc)."""

    async def process_activity(self, claims_identity, activity, callback):
        if not activity.service_url:
            activity.service_url = PLACEHOLDER_SERVICE_URL
        return await super().process_activity(claims_identity, activity, callback)


async def raise_turn_error(context: TurnContext, error: Exception):
    print(f"[on_turn_error] {error!r}", file=sys.stderr)
    raise error  # -> HTTP 500, counted by wrk


def make_app(args) -> Application:
    logging.getLogger("microsoft_agents.hosting.core.connector.client.user_token_client").setLevel(
        logging.ERROR
    )
    agents_sdk_config = load_configuration_from_env(environ)

    STORAGE = MemoryStorage()
    CONNECTION_MANAGER = MsalConnectionManager(**agents_sdk_config)
    ADAPTER = LoopbackCloudAdapter(connection_manager=CONNECTION_MANAGER)
    ADAPTER.on_turn_error = raise_turn_error
    AUTHORIZATION = Authorization(STORAGE, CONNECTION_MANAGER, **agents_sdk_config)

    AGENT_APP = AgentApplication[TurnState](
        storage=STORAGE, adapter=ADAPTER, authorization=AUTHORIZATION, **agents_sdk_config
    )

    async def on_message(context: TurnContext, state: TurnState):
        user_turns = state.user.get_value("turns", lambda: 0) + 1
        state.user.set_value("turns", user_turns)
        conversation_turns = state.conversation.get_value("turns", lambda: 0) + 1
        state.conversation.set_value("turns", conversation_turns)
        await context.send_activity(f"echo: {context.activity.text} (turn {user_turns})")

    async def on_message_inline(context: TurnContext, state: TurnState):
        activity = context.activity
        user_turns = inline_state.get_user_data(activity, "turns", 0) + 1
        conversation_turns = inline_state.get_conversation_data(activity, "turns", 0) + 1
        reply = MessageFactory.text(f"echo: {activity.text} (turn {user_turns})")
        inline_state.set_user_data(reply, "turns", user_turns)
        inline_state.set_conversation_data(reply, "turns", conversation_turns)
        await context.send_activity(reply)

    # start_server() from the samples, minus run_app (done by _serve).
    async def entry_point(req: Request) -> Response:
        agent: AgentApplication = req.app["agent_app"]
        adapter: CloudAdapter = req.app["adapter"]
        return await start_agent_process(req, agent, adapter)

    APP = Application(middlewares=[jwt_authorization_middleware])
    APP.router.add_post("/api/messages", entry_point)
    APP["agent_configuration"] = CONNECTION_MANAGER.get_default_connection_configuration()
    APP["agent_app"] = AGENT_APP
    APP["adapter"] = ADAPTER  # samples: agent_application.adapter (deprecated property in 1.9)
    if args.inline_state:
        AGENT_APP.activity("message")(on_message_inline)
        inline_state.agents.setup(APP, ADAPTER, "memory://")
    else:
        AGENT_APP.activity("message")(on_message)
    return APP


def add_args(parser):
    parser.add_argument("--inline-state", action="store_true")


if __name__ == "__main__":
    serve(make_app, add_args)
