"""aiohttp glue the adapters share: where an app keeps its engine, reading a body, and
JSON error answers. Knows aiohttp and the error types; no rules of its own."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import hdrs, web
from aiohttp.web_protocol import RequestPayloadError

from ._body import BodyError
from ._engine import Engine
from ._errors import StoreUnavailable, TurnError
from .stores import Store

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
