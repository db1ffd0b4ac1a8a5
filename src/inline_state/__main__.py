"""Command line: ``python -m inline_state {state-service,proxy} --listen HOST:PORT ...``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any

from aiohttp import web

from ._http import is_loopback
from ._inspector import add_inspector
from ._proxy import proxy_app
from ._rest import add_state_api
from .stores import open_store

SECRET_ENV = "INLINE_STATE_SECRET"


def _listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inline-state", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    service = commands.add_parser(
        "state-service",
        help="serve the Bot State REST API alone (a drop-in for the retired state service)",
    )
    service.add_argument("--listen", type=_listen, default=("127.0.0.1", 3979), metavar="HOST:PORT")
    service.add_argument("--store", default="memory://", help="store URL (default memory://)")
    service.add_argument(
        "--bot-id", required=True, help="the bot's channel account id (recipient.id)"
    )
    service.add_argument("--app-id", help="require this appId in HTTP Basic credentials")
    service.add_argument(
        "--secret", help=f"the API secret (or set {SECRET_ENV}); Bearer or Basic appId:secret"
    )
    service.add_argument(
        "--no-auth", action="store_true", help="no credentials; only on a loopback address"
    )
    service.add_argument(
        "--inspector",
        action="store_true",
        help="also serve the inspector page at /inspector/, behind the same secret",
    )
    proxy = commands.add_parser(
        "proxy", help="play the connector's part in front of a bot in any language"
    )
    proxy.add_argument("--listen", type=_listen, default=("127.0.0.1", 3980), metavar="HOST:PORT")
    proxy.add_argument("--upstream", required=True, help="the bot's messaging endpoint URL")
    proxy.add_argument("--store", default="memory://", help="store URL (default memory://)")
    proxy.add_argument("--channel", help="forward replies the bot POSTs to this base URL")
    proxy.add_argument(
        "--allow-service-url",
        action="append",
        default=[],
        metavar="URL",
        help="forward POSTed replies to a serviceUrl under this URL (repeatable)",
    )
    proxy.add_argument(
        "--rewrite-service-url",
        metavar="PUBLIC_URL",
        help="rewrite incoming serviceUrl to this proxy (breaks channels that check tokens"
        " against the serviceUrl)",
    )
    proxy.add_argument("--timeout", type=float, default=10.0, help="seconds to wait upstream")
    return parser


def proxy_app_from(args: argparse.Namespace) -> web.Application:
    """The proxy's app for parsed arguments."""
    return proxy_app(
        upstream=args.upstream,
        store=args.store,
        channel=args.channel,
        allow_service_urls=args.allow_service_url,
        rewrite_service_url=args.rewrite_service_url,
        timeout=args.timeout,
    )


def state_service_app(args: argparse.Namespace) -> web.Application:
    """The standalone state service's app for parsed arguments."""
    secret = args.secret or os.environ.get(SECRET_ENV)
    host, _ = args.listen
    if args.no_auth:
        if secret:
            raise SystemExit("--no-auth and a secret exclude each other")
        if not is_loopback(host):
            raise SystemExit(f"--no-auth listens on loopback addresses only, not {host!r}")
        print(
            f"WARNING: inline_state state service WITHOUT AUTHENTICATION on {host} (loopback only)",
            file=sys.stderr,
            flush=True,
        )
    elif not secret:
        raise SystemExit(f"a secret is required: --secret or {SECRET_ENV} (or --no-auth)")
    app = web.Application()
    store = open_store(args.store)

    async def opened(app: web.Application) -> AsyncIterator[None]:
        async with store:
            yield

    app.cleanup_ctx.append(opened)
    auth: dict[str, Any] = {
        "secret": None if args.no_auth else secret,
        "bot_id": args.bot_id,
        "no_auth": args.no_auth,
        "store": store,
    }
    add_state_api(app, app_id=args.app_id, **auth)
    if args.inspector:
        add_inspector(app, **auth)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m inline_state`` and the ``inline-state`` script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    host, port = args.listen
    app = state_service_app(args) if args.command == "state-service" else proxy_app_from(args)
    web.run_app(app, host=host, port=port)


if __name__ == "__main__":
    main()
