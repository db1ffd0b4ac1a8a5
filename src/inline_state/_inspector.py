"""The inspector: a web page over a store's records, behind the REST API's secret.

A person logs in with the secret and gets a session cookie (HttpOnly, SameSite=Strict,
scoped to the inspector's path) and a CSRF token the page keeps in memory; every POST
carries the token in a header and, when the browser sends one, an Origin equal to the
inspector's own. In no-auth mode only loopback clients are answered, and only under a
loopback Host name (a page whose own host name resolves to 127.0.0.1 is refused: DNS
rebinding). Every answer holds a Content-Security-Policy without inline script; the
page writes ids, names and values as text, never as markup.

Everything is read with the store's inspecting operations (``channels``,
``list_keys``, ``inspect``), which refresh no expiry; saves are compare-and-set with
the eTag the page read.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.resources
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import hdrs, web
from yarl import URL

from . import _body
from ._body import NOT_JSON, BodyError
from ._change import DEFAULT_MAX_BAG_BYTES, DEFAULT_MAX_PROPERTIES
from ._clock import stamp_ms
from ._codec import DEFAULT_MAX_DEPTH, dumps, loads
from ._counters import effective, effective_stamps
from ._diff import encode_bag
from ._engine import DEFAULT_MAX_ID_LENGTH, id_too_long
from ._errors import BagError, InvalidCursor
from ._http import (
    Credentials,
    Refusal,
    StoreSlot,
    is_loopback,
    log_internal_error,
    not_allowed,
    read_body,
    readable,
    unreadable_body,
)
from ._keys import RecordKey, UserRef
from ._message import KINDS
from .stores import InspectedRecord, PreconditionFailed, RecordTooLarge, Store, StoreUnavailable

__all__ = ["add_inspector"]

logger = logging.getLogger("inline_state")

#: Session cookies are named this plus a suffix from the inspector's path and local port:
#: browsers scope cookies by host, not port, so two inspectors on one host must not share
#: a name (and one inspector keeps its name across restarts, so old cookies are replaced).
SESSION_COOKIE = "inline_state_inspector_"
#: Headers reverse proxies and CDNs add: no-auth mode refuses a request carrying any,
#: since the proxy's own loopback connection would pass for a local client. A proxy that
#: adds none cannot be told apart: no-auth mode must never sit behind one.
FORWARDING_HEADERS = (
    "Forwarded",
    "X-Forwarded-For",
    "X-Forwarded-Host",
    "X-Forwarded-Proto",
    "X-Forwarded-Port",
    "X-Forwarded-Server",
    "X-Original-Forwarded-For",
    "X-Real-IP",
    "X-Client-IP",
    "True-Client-IP",
    "CF-Connecting-IP",
    "Via",
)
_HOST = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[^\[\]:]+))(?::\d{1,5})?")
CSRF_HEADER = "X-Inline-State-CSRF"
#: The policy of every answer: scripts and styles from the inspector's own files only.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self';"
    " img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_FILES = {"index.html": "text/html", "inspector.js": "text/javascript", "inspector.css": "text/css"}
_PAGE_LIMIT = 50
_MAX_SESSIONS = 1000
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(slots=True)
class _Session:
    bot: str
    csrf: str
    expires: float


def _iso(ms: int) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def _pretty(data: bytes) -> str:
    value, _ = loads(data)
    return json.dumps(value, indent=2, ensure_ascii=False)


def _origin_of(url: str) -> str:
    """``scheme://host[:port]`` as browsers send it in ``Origin`` (host lower case, no
    default port); ValueError for a URL with a path, query or fragment."""
    parsed = URL(url)
    if (
        not parsed.absolute
        or parsed.path not in ("", "/")
        or parsed.query_string
        or parsed.fragment
    ):
        raise ValueError(f"public_origin must be scheme://host[:port], got {url!r}")
    return str(parsed.origin())


def _host_name(host: str) -> str | None:
    """The name in a Host header, without its port (IPv6 literals without brackets),
    lower case; None when the header is not ``name[:port]`` or ``[v6][:port]``."""
    match = _HOST.fullmatch(host)
    if match is None:
        return None
    return (match["v6"] or match["name"]).lower()


class _Inspector:
    """The page's files and its JSON API; one instance per mounted inspector."""

    def __init__(
        self,
        store: str | Store | None,
        credentials: Credentials,
        prefix: str,
        public_origin: str | None,
        allowed_hosts: frozenset[str] | None,
        session_seconds: float,
        max_bytes: int,
        max_properties: int,
        max_depth: int,
        max_id_length: int,
    ) -> None:
        self.slot = StoreSlot(store, "add_inspector")
        self.credentials = credentials
        self.prefix = prefix
        self.public_origin = _origin_of(public_origin) if public_origin else None
        if allowed_hosts is None and credentials.no_auth_bot_id is not None:
            allowed_hosts = frozenset(_LOOPBACK_NAMES)
        self.allowed_hosts = allowed_hosts
        self.session_seconds = session_seconds
        self.max_bytes = max_bytes
        self.max_properties = max_properties
        self.max_depth = max_depth
        self.max_id_length = max_id_length
        self.sessions: dict[str, _Session] = {}
        folder = importlib.resources.files("inline_state") / "inspector"
        self.files = {name: (folder / name).read_bytes() for name in _FILES}

    def store(self, request: web.Request) -> Store:
        return self.slot.get(request)

    # -- who is asking --------------------------------------------------------------------

    def cookie(self, request: web.Request) -> str:
        """The session cookie's name for this inspector (see ``SESSION_COOKIE``)."""
        where = request.transport.get_extra_info("sockname") if request.transport else None
        port = where[1] if isinstance(where, tuple) and len(where) > 1 else 0
        digest = hashlib.sha256(f"{self.prefix}|{port}".encode()).hexdigest()
        return SESSION_COOKIE + digest[:8]

    def own_origin(self, request: web.Request) -> str:
        """The origin a browser on the inspector's page sends."""
        return self.public_origin or f"{request.scheme}://{request.host}"

    def check_same_origin(self, request: web.Request) -> None:
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is not None and origin != self.own_origin(request):
            raise Refusal(403, "Forbidden", "the request comes from another origin")

    def check_origin(self, request: web.Request) -> None:
        """Loopback only in no-auth mode (and not through a proxy), and only the allowed
        Host names."""
        if self.credentials.no_auth_bot_id is not None:
            if not is_loopback(request.remote):
                raise Refusal(403, "Forbidden", "no-auth mode answers loopback clients only")
            forwarded = [h for h in FORWARDING_HEADERS if h in request.headers]
            if forwarded:
                raise Refusal(
                    403,
                    "Forbidden",
                    f"no-auth mode answers no request through a proxy ({forwarded[0]} header)",
                )
        if self.allowed_hosts is not None:
            name = _host_name(request.host)
            if name not in self.allowed_hosts:
                raise Refusal(
                    403,
                    "Forbidden",
                    f"the Host {request.host!r} is not one this inspector answers to",
                )

    def session(self, request: web.Request) -> _Session:
        sid = request.cookies.get(self.cookie(request))
        session = self.sessions.get(sid) if sid else None
        if session is None or session.expires < time.monotonic():
            if sid:
                self.sessions.pop(sid, None)
            raise Refusal(401, "Unauthorized", "log in first (no session, or it ended)")
        return session

    def check_change(self, request: web.Request, session: _Session) -> None:
        """A change needs the session's CSRF token, and the inspector's own Origin."""
        sent = request.headers.get(CSRF_HEADER, "").encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(sent, session.csrf.encode()):
            raise Refusal(403, "Forbidden", f"missing or wrong {CSRF_HEADER} header")
        self.check_same_origin(request)

    # -- the page -------------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info.get("name") or "index.html"
        if name not in _FILES:
            raise Refusal(404, "NotFound", "no such file")
        return web.Response(body=self.files[name], content_type=_FILES[name], charset="utf-8")

    # -- sessions -------------------------------------------------------------------------

    async def login(self, request: web.Request) -> web.Response:
        body = await self.json_body(request)
        secret = body.get("secret")
        if secret is not None and not isinstance(secret, str):
            raise Refusal(400, "BadArgument", "secret must be a string")
        bot = self.credentials.no_auth_bot_id or self.credentials.bot_of(secret)
        if bot is None:
            raise Refusal(401, "Unauthorized", "wrong secret")
        while len(self.sessions) >= _MAX_SESSIONS:
            self.sessions.pop(next(iter(self.sessions)))
        sid = secrets.token_urlsafe(32)
        session = self.sessions[sid] = _Session(
            bot, secrets.token_urlsafe(32), time.monotonic() + self.session_seconds
        )
        response = web.json_response({"bot": bot, "csrf": session.csrf})
        response.set_cookie(
            self.cookie(request),
            sid,
            httponly=True,
            samesite="Strict",
            secure=request.secure or self.own_origin(request).startswith("https:"),
            path=self.prefix + "/",
            max_age=int(self.session_seconds),
        )
        return response

    async def whoami(self, request: web.Request) -> web.Response:
        try:
            session = self.session(request)
        except Refusal as exc:
            return _error(
                exc.status,
                exc.code,
                str(exc),
                noAuth=self.credentials.no_auth_bot_id is not None,
            )
        return web.json_response({"bot": session.bot, "csrf": session.csrf})

    async def logout(self, request: web.Request, session: _Session) -> web.Response:
        self.sessions.pop(request.cookies.get(self.cookie(request), ""), None)
        response = web.json_response({})
        response.del_cookie(self.cookie(request), path=self.prefix + "/")
        return response

    # -- reading --------------------------------------------------------------------------

    async def json_body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = _body.parse(await read_body(request), request.charset, self.max_depth)
        except BodyError as exc:
            raise Refusal(exc.status, exc.code, str(exc)) from None
        if body is NOT_JSON or not isinstance(body, dict):
            raise Refusal(400, "BadArgument", "the body must be a JSON object")
        return body

    @staticmethod
    def channel_of(fields: Mapping[str, Any]) -> str | None:
        """``channel``, or None (v1's namespace) when ``v1`` is true."""
        if fields.get("v1") in (True, "1", "true"):
            return None
        channel = fields.get("channel")
        if not isinstance(channel, str) or not channel:
            raise Refusal(400, "BadArgument", "channel must be a non-empty string (or v1=1)")
        return channel

    def key_of(self, fields: Mapping[str, Any], bot: str) -> RecordKey:
        kind = fields.get("kind")
        if kind not in KINDS:
            raise Refusal(400, "BadArgument", f"kind must be one of {', '.join(KINDS)}")
        ids = {}
        for name in ("user", "conversation"):
            if kind == "user" and name == "conversation":
                ids[name] = ""
                continue
            if kind == "conversation" and name == "user":
                ids[name] = ""
                continue
            value = fields.get(name)
            if not isinstance(value, str) or not value:
                raise Refusal(400, "BadArgument", f"{name} must be a non-empty string")
            ids[name] = value
        return RecordKey(kind, bot, self.channel_of(fields), ids["conversation"], ids["user"])

    async def channels(self, request: web.Request, session: _Session) -> web.Response:
        found = await self.store(request).channels(session.bot)
        return web.json_response({"channels": found})

    async def records(self, request: web.Request, session: _Session) -> web.Response:
        """A page of a listing; a POST because a cursor can outgrow a URL."""
        body = await self.json_body(request)
        channel = self.channel_of(body)
        kind = body.get("kind")
        prefix, cursor = body.get("prefix", ""), body.get("cursor")
        if kind not in KINDS:
            raise Refusal(400, "BadArgument", f"kind must be one of {', '.join(KINDS)}")
        if not isinstance(prefix, str) or (cursor is not None and not isinstance(cursor, str)):
            raise Refusal(400, "BadArgument", "prefix and cursor must be strings")
        try:
            page = await self.store(request).list_keys(
                session.bot, channel, kind, prefix=prefix, cursor=cursor, limit=_PAGE_LIMIT
            )
        except InvalidCursor:
            raise Refusal(400, "BadArgument", "the cursor is not one this listing gave") from None
        keys = [{"kind": k.kind, "user": k.user, "conversation": k.conversation} for k in page.keys]
        return web.json_response({"records": keys, "cursor": page.cursor})

    @staticmethod
    def record_json(key: RecordKey, inspected: InspectedRecord) -> dict[str, Any]:
        record, stored_stamps = inspected
        props = effective(readable(record).props)  # counters summed (_counters)
        stamps = effective_stamps(record.props, stored_stamps)
        properties = [
            {"name": name, "value": _pretty(value), "modified": _iso(stamp_ms(stamps[name]))}
            for name, value in sorted(props.items())
        ]
        data = None
        if props:
            data = json.dumps(
                {name: loads(value)[0] for name, value in props.items()},
                indent=2,
                ensure_ascii=False,
            )
        return {
            "kind": key.kind,
            "channel": key.channel,
            "user": key.user,
            "conversation": key.conversation,
            "exists": record.exists,
            "eTag": record.etag,
            "version": record.etag or "missing",
            "modified": _iso(record.modified_ms) if record.exists else None,
            "text": record.text,
            "data": data,
            "properties": properties,
        }

    async def read(self, request: web.Request, session: _Session) -> web.Response:
        """One record; a POST, so that ids travel as JSON (a URL cannot carry every
        string an id can be). ``known``: the eTag the page shows, answered with
        ``{"unchanged": true}`` while it is still the record's (the page polls)."""
        body = await self.json_body(request)
        key = self.key_of(body, session.bot)
        inspected = await self.store(request).inspect(key)
        if body.get("known") == (inspected.record.etag or "missing"):
            return _json({"unchanged": True})
        return _json(self.record_json(key, inspected))

    # -- changing -------------------------------------------------------------------------

    async def save(self, request: web.Request, session: _Session) -> web.Response:
        body = await self.json_body(request)
        key = self.key_of(body, session.bot)
        too_long = id_too_long(key, self.max_id_length)
        if too_long is not None:
            raise Refusal(400, "BadArgument", f"the record cannot be written: {too_long}")
        etag, text = body.get("eTag"), body.get("data")
        if not isinstance(etag, str) or not isinstance(text, str):
            raise Refusal(400, "BadArgument", "eTag and data (the bag as JSON text) are strings")
        try:
            raw = text.encode("utf-8")
        except UnicodeEncodeError:
            raise Refusal(400, "BadArgument", "data holds a lone surrogate") from None
        try:
            bag = _body.parse(raw, "utf-8", self.max_depth)
        except BodyError as exc:
            raise Refusal(400, "BadArgument", f"data: {exc}") from None
        if bag is NOT_JSON or not isinstance(bag, dict):
            raise Refusal(400, "BadArgument", "data must be a JSON object: the bag")
        try:
            stored = encode_bag(
                "data",
                bag,
                self.max_bytes,
                max_properties=self.max_properties,
                max_depth=self.max_depth,
            )
        except BagError as exc:
            raise Refusal(400, "BadArgument", str(exc)) from None
        store = self.store(request)
        try:
            new_etag = await store.compare_and_set(key, stored, etag, max_bytes=self.max_bytes)
        except PreconditionFailed:
            current = self.record_json(key, await store.inspect(key))
            return _error(
                412,
                "PreconditionFailed",
                "the record changed since it was read; nothing was written",
                current=current,
            )
        except RecordTooLarge as exc:
            raise Refusal(400, "MessageSizeTooBig", str(exc)) from None
        return web.json_response({"eTag": new_etag})

    async def delete_user(self, request: web.Request, session: _Session) -> web.Response:
        body = await self.json_body(request)
        user = body.get("user")
        if not isinstance(user, str) or not user:
            raise Refusal(400, "BadArgument", "user must be a non-empty string")
        store = self.store(request)
        await store.delete_user(
            UserRef(session.bot, self.channel_of(body), user), store.clock.stamp()
        )
        return web.json_response({"deleted": True})


def _json(
    value: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=dumps(value), status=status, content_type="application/json", headers=headers
    )


def _error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return _json({"error": {"code": code, "message": message}, **extra}, status=status)


def _secured(response: web.StreamResponse) -> web.StreamResponse:
    headers = response.headers
    headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    headers["X-Content-Type-Options"] = "nosniff"
    headers["X-Frame-Options"] = "DENY"
    headers["Referrer-Policy"] = "no-referrer"
    headers["Cache-Control"] = "no-store"
    return response


Open = Callable[[web.Request], Awaitable[web.StreamResponse]]
InSession = Callable[[web.Request, _Session], Awaitable[web.StreamResponse]]


def _wrap(inspector: _Inspector, handler: Open | InSession, *, in_session: bool) -> Open:
    async def respond(request: web.Request) -> web.StreamResponse:
        unreadable = await unreadable_body(request)
        try:
            inspector.check_origin(request)
            if not in_session:
                if request.method == "POST":  # the login: no session yet, but our Origin
                    inspector.check_same_origin(request)
                if unreadable is not None:
                    raise unreadable
                return _secured(await handler(request))  # type: ignore[call-arg]
            session = inspector.session(request)
            if request.method == "POST":
                inspector.check_change(request, session)
            if unreadable is not None:
                raise unreadable
            return _secured(await handler(request, session))  # type: ignore[call-arg]
        except BodyError as exc:
            refused = _error(exc.status, exc.code, str(exc))
            if exc.close_connection:  # the body's bytes broke its parser (see read_body)
                refused.force_close()
            return _secured(refused)
        except Refusal as exc:
            refused = _error(exc.status, exc.code, str(exc))
            if unreadable is not None and unreadable.close_connection:
                refused.force_close()
            return _secured(refused)
        except StoreUnavailable as exc:
            logger.error("state store unavailable: %s", exc)
            return _secured(
                _error(503, "ServiceUnavailable", f"the state store is unavailable: {exc}")
            )
        except web.HTTPException:
            raise
        except Exception as exc:  # a fault of ours must not become a bare 500
            log_internal_error("the inspector", exc)  # the details go to the log only
            return _secured(_error(500, "InternalError", "the inspector failed; see its log"))

    return respond


def add_inspector(
    app: web.Application,
    *,
    secret: str | None = None,
    bot_id: str | None = None,
    credentials: Mapping[str, str] | None = None,
    no_auth: bool = False,
    store: str | Store | None = None,
    prefix: str = "/inspector",
    public_origin: str | None = None,
    allowed_hosts: frozenset[str] | set[str] | None = None,
    session_seconds: float = 8 * 3600,
    max_bytes: int = DEFAULT_MAX_BAG_BYTES,
    max_properties: int = DEFAULT_MAX_PROPERTIES,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_id_length: int = DEFAULT_MAX_ID_LENGTH,
) -> None:
    """Serve the inspector page at ``prefix`` (``/inspector/`` by default) on ``app``.

    Credentials are the REST API's (``secret`` + ``bot_id``, or ``credentials``); a
    person logs in with the secret and sees that bot's records. ``no_auth=True`` (with
    ``bot_id``) skips the secret for loopback clients reaching a loopback Host name.
    ``allowed_hosts`` limits the Host names answered (lower case, without port; in
    no-auth mode the loopback names by default). Behind a proxy that terminates TLS, give
    ``public_origin`` (``"https://bot.example.com"``): browsers' ``Origin`` must equal it,
    and the cookie is ``Secure``. No-auth mode refuses requests a proxy forwarded. ``store`` defaults to the one
    ``setup()`` gave the app; the limits are the middleware's.
    """
    inspector = _Inspector(
        store,
        Credentials(
            secret=secret,
            bot_id=bot_id,
            credentials=credentials,
            no_auth=no_auth,
            what="the inspector",
        ),
        prefix.rstrip("/"),
        public_origin,
        frozenset(host.lower() for host in allowed_hosts) if allowed_hosts is not None else None,
        session_seconds,
        max_bytes,
        max_properties,
        max_depth,
        max_id_length,
    )
    inspector.slot.mount(app)
    base = inspector.prefix
    router = app.router
    router.add_get(base, _wrap(inspector, _redirect_to(base + "/"), in_session=False))
    router.add_get(base + "/", _wrap(inspector, inspector.page, in_session=False))
    router.add_get(base + "/{name}", _wrap(inspector, inspector.page, in_session=False))
    router.add_post(base + "/api/login", _wrap(inspector, inspector.login, in_session=False))
    router.add_get(base + "/api/session", _wrap(inspector, inspector.whoami, in_session=False))
    in_session: dict[tuple[str, str], InSession] = {
        ("POST", "logout"): inspector.logout,
        ("GET", "channels"): inspector.channels,
        ("POST", "records"): inspector.records,
        ("POST", "read"): inspector.read,
        ("POST", "save"): inspector.save,
        ("POST", "delete-user"): inspector.delete_user,
    }
    allowed: dict[str, list[str]] = {"login": ["POST"], "session": ["GET"]}
    for (method, name), handler in in_session.items():
        router.add_route(method, f"{base}/api/{name}", _wrap(inspector, handler, in_session=True))
        allowed.setdefault(name, []).append(method)
    for name, methods in allowed.items():
        # Any other method: a JSON 405, after the body was read (aiohttp's own skips it).
        router.add_route(
            "*", f"{base}/api/{name}", _wrap(inspector, not_allowed(methods), in_session=False)
        )


def _redirect_to(location: str) -> Open:
    async def redirect(request: web.Request) -> web.StreamResponse:
        return web.Response(status=308, headers={hdrs.LOCATION: location})

    return redirect
