"""Incumbent baseline: botbuilder-python v4 (4.17.x), shaped like the official sample
45.state-management: ActivityHandler + UserState + ConversationState on MemoryStorage,
CloudAdapter + ConfigurationBotFrameworkAuthentication, served by aiohttp.

Differences from the sample, all needed to benchmark it over plain HTTP:
- auth disabled (empty app id / password), so no JWT is required or checked;
- callers send deliveryMode "expectReplies", so replies are buffered and returned in the
  HTTP response body as {"activities": [...]} instead of being POSTed to serviceUrl;
- CloudAdapter in 4.17.1 cannot return expectReplies at all: CloudAdapterBase
  ._process_turn_results() already .serialize()s ExpectedReplies to a dict, then
  CloudAdapter.process() passes that dict to serializer_helper(), which needs a msrest
  Model -> AttributeError "'dict' object has no attribute 'is_xml_model'" -> HTTP 500
  (regression from the fix for botbuilder-python issue #2156). ExpectRepliesCloudAdapter
  below returns the model unserialized so it is serialized exactly once, as upstream intends;
- one reply per turn ("echo: <text> (turn <n>)") instead of the sample's name prompt and
  three replies, so the work per turn matches baseline.py.

--patch-msrest (off by default): botbuilder builds two msrest clients per turn (a
ConnectorClient and a UserTokenClient), even when the replies are buffered and nothing is
sent. Each builds msrest's ClientRetryPolicy, whose __init__ runs
`[i for i in range(999) if i not in self.safe_codes]` with safe_codes a 502-item *list*:
~0.5M comparisons, a few ms of CPU per client and most of botbuilder's per-turn cost here.
The flag turns safe_codes into a frozenset (same resulting retry codes), to show what
botbuilder costs without that one hotspot.
"""
import sys

from aiohttp import web
from botbuilder.core import (
    ActivityHandler,
    ConversationState,
    MemoryStorage,
    TurnContext,
    UserState,
)
from botbuilder.core.integration import aiohttp_error_middleware
from botbuilder.core import InvokeResponse
from botbuilder.integration.aiohttp import (
    CloudAdapter,
    ConfigurationBotFrameworkAuthentication,
)
from botbuilder.schema import DeliveryModes, ExpectedReplies

from _serve import serve


class Config:
    APP_ID = ""
    APP_PASSWORD = ""
    APP_TYPE = "MultiTenant"
    APP_TENANTID = ""


class ExpectRepliesCloudAdapter(CloudAdapter):
    """Workaround for the 4.17.1 expectReplies double-serialization bug (see module doc)."""

    def _process_turn_results(self, context: TurnContext) -> InvokeResponse:
        if context.activity.delivery_mode == DeliveryModes.expect_replies:
            return InvokeResponse(
                status=200,
                body=ExpectedReplies(activities=context.buffered_reply_activities),
            )
        return super()._process_turn_results(context)


class UserProfile:
    def __init__(self, name: str = None, turns: int = 0):
        self.name = name
        self.turns = turns


class ConversationData:
    def __init__(self, turns: int = 0, channel_id: str = None):
        self.turns = turns
        self.channel_id = channel_id


class StateBot(ActivityHandler):
    def __init__(self, conversation_state: ConversationState, user_state: UserState):
        self.conversation_state = conversation_state
        self.user_state = user_state
        self.conversation_data_accessor = conversation_state.create_property("ConversationData")
        self.user_profile_accessor = user_state.create_property("UserProfile")

    async def on_turn(self, turn_context: TurnContext):
        await super().on_turn(turn_context)
        await self.conversation_state.save_changes(turn_context)
        await self.user_state.save_changes(turn_context)

    async def on_message_activity(self, turn_context: TurnContext):
        user_profile = await self.user_profile_accessor.get(turn_context, UserProfile)
        conversation_data = await self.conversation_data_accessor.get(
            turn_context, ConversationData
        )
        user_profile.turns += 1
        conversation_data.turns += 1
        conversation_data.channel_id = turn_context.activity.channel_id
        await turn_context.send_activity(
            f"echo: {turn_context.activity.text} (turn {user_profile.turns})"
        )


def add_args(p):
    p.add_argument("--patch-msrest", action="store_true")


def make_app(args) -> web.Application:
    if args.patch_msrest:
        from msrest.universal_http.requests import ClientRetryPolicy

        ClientRetryPolicy.safe_codes = frozenset(ClientRetryPolicy.safe_codes)

    adapter = ExpectRepliesCloudAdapter(ConfigurationBotFrameworkAuthentication(Config()))

    async def on_error(context: TurnContext, error: Exception):
        print(f"[on_turn_error] {error!r}", file=sys.stderr)

    adapter.on_turn_error = on_error
    memory = MemoryStorage()
    bot = StateBot(ConversationState(memory), UserState(memory))

    async def messages(req: web.Request) -> web.Response:
        return await adapter.process(req, bot)

    app = web.Application(middlewares=[aiohttp_error_middleware])
    app.router.add_post("/api/messages", messages)
    return app


if __name__ == "__main__":
    serve(make_app, add_args)
