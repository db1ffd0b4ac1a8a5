"""aiohttp glue the adapters share: where an app keeps its engine, reading a body, and
JSON error answers. Knows aiohttp and the error types; no rules of its own."""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from aiohttp import hdrs, web
from aiohttp.web_protocol import RequestPayloadError

from ._body import BodyError
from ._codec import SEALED_TEXT, is_sealed
from ._engine import Engine
from ._errors import StoreUnavailable, TurnError
from .stores import Store, StoredRecord, open_store

__all__ = ["ENGINE_KEY", "STORE_KEY"]

logger = logging.getLogger("inline_state")

#: The engine ``setup()`` gave an app (the REST API and the SDK integrations find it).
ENGINE_KEY: web.AppKey[Engine] = web.AppKey("inline_state.engine", Engine)
#: The store ``setup()`` gave an app (kept for code that read it; the engine has it).
STORE_KEY: web.AppKey[Store] = web.AppKey("inline_state.store", Store)


def json_error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    """``{"error": {"code", "message", ...}}`` with a status."""
    return web.json_response({"error": {"code": code, "message": message, **extra}}, status=status)


async def read_body(request: web.BaseRequest) -> bytes:
    """The request body, or BodyError: over ``client_max_size`` (413), or bytes that do
    not match their Content-Encoding (400)."""
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BodyError(
            413,
            "BodyTooLarge",
            f"the body is larger than the server's limit of {request.client_max_size} bytes",
        ) from None
    except RequestPayloadError as exc:
        # After the response aiohttp would read the rest of the broken payload and log
        # the same error again with a traceback: end the payload here and close the
        # connection (its parser is broken anyway) once the answer is sent.
        request.content.feed_eof()
        request.protocol.close()
        encoding = request.headers.get(hdrs.CONTENT_ENCODING, "")
        raise BodyError(
            400,
            "UndecodableBody",
            f"the body cannot be read as sent (Content-Encoding {encoding!r}):"
            f" {' '.join(str(exc).split())}",
            close_connection=True,
        ) from None


async def unreadable_body(request: web.BaseRequest) -> BodyError | None:
    """Read (and so check) a request's body before answering, even one the answer will
    ignore: a body aiohttp finds broken after the handler would be logged with a
    traceback. The BodyError, if it was broken."""
    if request.body_exists:
        try:
            await read_body(request)
        except BodyError as exc:
            return exc
    return None


def body_error_response(exc: BodyError) -> web.Response:
    """A refused body's JSON error response."""
    response = web.json_response(exc.to_json(), status=exc.status)
    if exc.close_connection:
        response.force_close()
    return response


def turn_error_response(exc: TurnError) -> web.Response:
    """A turn whose bags cannot be stored: its JSON error, logged."""
    logger.error("inline_state: %s", exc)
    return web.json_response(exc.to_json(), status=exc.status)


def unavailable_response(exc: StoreUnavailable) -> web.Response:
    """The store is down or slow: 503, logged."""
    logger.error("state store unavailable: %s", exc)
    return json_error(503, "StoreUnavailable", f"the state store is unavailable: {exc}")


def log_internal_error(where: str, exc: Exception) -> None:
    """Log a fault of ours: what failed at error level, the traceback at debug only."""
    logger.error("inline_state: internal error on %s: %s: %s", where, type(exc).__name__, exc)
    logger.debug("inline_state: internal error on %s", where, exc_info=exc)


def internal_error_response(where: str, exc: Exception) -> web.Response:
    """A fault of ours, answered as JSON (and logged by ``log_internal_error``)."""
    log_internal_error(where, exc)
    return json_error(
        500, "InternalError", f"inline_state failed on {where}: {type(exc).__name__}: {exc}"
    )


def is_loopback(host: str | None) -> bool:
    """True for a loopback address (or ``localhost``)."""
    if host is None:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def header_bytes(text: str) -> bytes:
    """A header's text as the bytes it came in (aiohttp decodes bytes that are not UTF-8
    as surrogate escapes; they are kept)."""
    return text.encode("utf-8", "surrogateescape")


class Credentials:
    """Secrets, each standing for one bot id; or, in no-auth mode, one bot id for
    loopback clients without a secret. Shared by the REST API and the inspector."""

    def __init__(
        self,
        *,
        secret: str | None,
        bot_id: str | None,
        credentials: Mapping[str, str] | None,
        no_auth: bool,
        what: str,
    ) -> None:
        table = dict(credentials or {})
        if secret is not None:
            if bot_id is None:
                raise ValueError("secret needs the bot_id it stands for")
            table[secret] = bot_id
        if any(not s for s in table):
            raise ValueError("empty secrets are not allowed")
        if no_auth:
            if table:
                raise ValueError("no_auth and credentials exclude each other")
            if bot_id is None:
                raise ValueError("no_auth needs bot_id")
            logger.warning("inline_state: %s runs WITHOUT authentication (loopback only)", what)
        elif not table:
            raise ValueError(
                f"{what} is not mounted without a secret: pass secret= and bot_id=,"
                " credentials=, or no_auth=True for loopback-only use"
            )
        self.table = {header_bytes(known): bot for known, bot in table.items()}
        self.no_auth_bot_id = bot_id if no_auth else None

    def bot_of(self, secret: str | None) -> str | None:
        """The bot id a secret stands for, or None."""
        if not secret:
            return None
        try:
            sent = header_bytes(secret)
        except UnicodeEncodeError:  # a lone surrogate, which JSON can carry
            return None
        bot_id = None
        for known, bot in self.table.items():
            # Compare against every credential so timing says nothing about which.
            if hmac.compare_digest(sent, known):
                bot_id = bot
        return bot_id


class StoreSlot:
    """The store an adapter that reads records directly uses (the REST API, the
    inspector): one it was given, one it opens from a URL for the app's lifetime
    (``cleanup_ctx``), or, given none, the one ``setup()`` gave the app."""

    def __init__(self, store: str | Store | None, what: str) -> None:
        self._arg = store
        self._store: Store | None = store if isinstance(store, Store) else None
        self._what = what

    def mount(self, app: web.Application) -> None:
        """Open and close a store given as a URL with the app."""
        if isinstance(self._arg, str):
            app.cleanup_ctx.append(self._cleanup_ctx)

    async def _cleanup_ctx(self, app: web.Application) -> AsyncIterator[None]:
        assert isinstance(self._arg, str)
        self._store = open_store(self._arg)
        async with self._store:
            yield

    def get(self, request: web.Request) -> Store:
        """The store, found on the app on first use when none was given."""
        if self._store is None:
            store = request.config_dict.get(STORE_KEY)
            if store is None:
                raise RuntimeError(f"{self._what} needs a store: call setup() first or pass one")
            self._store = store
        return self._store


def readable(record: StoredRecord) -> StoredRecord:
    """The record, unless it holds sealed values (the adapter was given the plain store
    under a ``SealedStore``): then a 503 saying so, never the sealed bytes as data."""
    if any(map(is_sealed, record.props.values())) or (
        record.text is not None and record.text.startswith(SEALED_TEXT)
    ):
        raise Refusal(
            503,
            "StoreUnavailable",
            "the store holds sealed values: read it through the SealedStore"
            " (the one setup(encryption=...) gives the app, or SealedStore(store, keys))",
        )
    return record


class Refusal(Exception):
    """A request refused with a status and an error code: the REST API and the
    inspector answer it as JSON in their own shape."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def not_allowed(methods: list[str]) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A handler refusing every method but ``methods`` with a 405 that lists them."""
    listed = ", ".join(sorted({*methods, *(["HEAD"] if "GET" in methods else [])}))

    async def refuse(request: web.Request) -> web.Response:
        raise Refusal(405, "MethodNotAllowed", f"{request.method} is not allowed here: {listed}")

    return refuse
