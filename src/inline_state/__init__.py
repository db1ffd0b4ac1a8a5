"""Bot Framework "cookie" state for any aiohttp bot.

A bot sets ``botUserData``, ``botConversationData`` or ``botPerUserInConversationData``
on a reply; the middleware persists it, strips it from the wire, and plays it back on
the next incoming message from the same user or conversation.
"""

import typing as _typing

from ._change import Change
from ._client import InlineStateClientMiddleware
from ._clock import HybridClock
from ._engine import Engine
from ._errors import (
    BagError,
    IdTooLong,
    InvalidCursor,
    PreconditionFailed,
    RecordTooLarge,
    StoreError,
    StoreUnavailable,
    TurnError,
)
from ._helpers import (
    create_reply,
    del_conversation_data,
    del_private_conversation_data,
    del_user_data,
    get_conversation_data,
    get_private_conversation_data,
    get_user_data,
    incr_conversation_data,
    incr_private_conversation_data,
    incr_user_data,
    set_conversation_data,
    set_private_conversation_data,
    set_user_data,
)
from ._http import ENGINE_KEY, STORE_KEY
from ._inspector import add_inspector
from ._keys import RecordKey, UserRef
from ._prometheus import add_metrics
from ._proxy import proxy_app
from ._rest import add_state_api
from ._server import InlineStateMiddleware, ReplyResponse, get_message, get_turn
from ._setup import setup
from ._state_client import BotData, StateApiError, StateClient
from ._turn import Turn, current_turn
from .stores import (
    ApplyResult,
    DumpedRecord,
    DumpPage,
    ExportPage,
    InspectedRecord,
    KeyPage,
    MemoryStore,
    Store,
    StoredRecord,
    open_store,
)

if _typing.TYPE_CHECKING:
    from ._seal import KeyRing, KeyRingError
    from .stores.redis import RedisStore
    from .stores.sealed import SealedStore
    from .stores.sqlite import SqliteStore

__version__ = "0.1.0"

__all__ = [
    "ENGINE_KEY",
    "STORE_KEY",
    "ApplyResult",
    "BagError",
    "BotData",
    "Change",
    "DumpPage",
    "DumpedRecord",
    "Engine",
    "ExportPage",
    "HybridClock",
    "IdTooLong",
    "InlineStateClientMiddleware",
    "InlineStateMiddleware",
    "InspectedRecord",
    "InvalidCursor",
    "KeyPage",
    "KeyRing",
    "KeyRingError",
    "MemoryStore",
    "PreconditionFailed",
    "RecordKey",
    "RecordTooLarge",
    "RedisStore",
    "ReplyResponse",
    "SealedStore",
    "SqliteStore",
    "StateApiError",
    "StateClient",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "StoredRecord",
    "Turn",
    "TurnError",
    "UserRef",
    "add_inspector",
    "add_metrics",
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
    "incr_conversation_data",
    "incr_private_conversation_data",
    "incr_user_data",
    "open_store",
    "proxy_app",
    "set_conversation_data",
    "set_private_conversation_data",
    "set_user_data",
    "setup",
]


def __getattr__(name: str) -> _typing.Any:
    # Backends that pull in a library load on first use: ``import inline_state`` loads
    # neither sqlite3 nor redis (which is the ``redis`` extra).
    if name in ("RedisStore", "SqliteStore", "SealedStore"):
        from . import stores

        backend = getattr(stores, name)
        backend.__module__ = __name__
        return backend
    if name in ("KeyRing", "KeyRingError"):  # the ``encryption`` extra: cryptography
        from . import stores

        stores.__getattr__("SealedStore")  # the extra's message, when it is missing
        from . import _seal

        sealing = getattr(_seal, name)
        sealing.__module__ = __name__
        return sealing
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _rewrite_modules() -> None:
    # Public names show as inline_state.X (in reprs, docs and tracebacks), not as the
    # private module that defines them.
    for name in __all__:
        value = globals().get(name)
        if getattr(value, "__module__", "").startswith(__name__ + ".") and hasattr(
            value, "__qualname__"
        ):
            value.__module__ = __name__


_rewrite_modules()
