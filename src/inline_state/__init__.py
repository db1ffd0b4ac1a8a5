"""Bot Framework "cookie" state for any aiohttp bot.

A bot sets ``botUserData``, ``botConversationData`` or ``botPerUserInConversationData``
on a reply; the middleware persists it, strips it from the wire, and plays it back on
the next incoming message from the same user or conversation.
"""

from ._change import BagError, Change
from ._client import InlineStateClientMiddleware
from ._clock import HybridClock
from ._helpers import (
    create_reply,
    del_conversation_data,
    del_private_conversation_data,
    del_user_data,
    get_conversation_data,
    get_private_conversation_data,
    get_user_data,
    set_conversation_data,
    set_private_conversation_data,
    set_user_data,
)
from ._keys import RecordKey, UserRef
from ._proxy import proxy_app
from ._rest import add_state_api
from ._server import (
    STORE_KEY,
    InlineStateMiddleware,
    ReplyResponse,
    get_message,
    get_turn,
    setup,
)
from ._state_client import BotData, StateApiError, StateClient
from ._turn import Turn, current_turn
from .stores import (
    ApplyResult,
    ExportPage,
    MemoryStore,
    PreconditionFailed,
    RecordTooLarge,
    RedisStore,
    SqliteStore,
    Store,
    StoredRecord,
    StoreError,
    StoreUnavailable,
    open_store,
)

__version__ = "0.1.0"

__all__ = [
    "STORE_KEY",
    "ApplyResult",
    "BagError",
    "BotData",
    "Change",
    "ExportPage",
    "HybridClock",
    "InlineStateClientMiddleware",
    "InlineStateMiddleware",
    "MemoryStore",
    "PreconditionFailed",
    "RecordKey",
    "RecordTooLarge",
    "RedisStore",
    "ReplyResponse",
    "SqliteStore",
    "StateApiError",
    "StateClient",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "StoredRecord",
    "Turn",
    "UserRef",
    "add_state_api",
    "create_reply",
    "current_turn",
    "del_conversation_data",
    "del_private_conversation_data",
    "del_user_data",
    "get_conversation_data",
    "get_message",
    "get_private_conversation_data",
    "get_turn",
    "get_user_data",
    "open_store",
    "proxy_app",
    "set_conversation_data",
    "set_private_conversation_data",
    "set_user_data",
    "setup",
]
