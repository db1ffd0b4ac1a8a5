"""Command line: ``python -m inline_state COMMAND``: ``state-service`` and ``proxy``
serve; ``keygen``, ``rekey`` and ``copy`` look after a store."""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import os
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any

from aiohttp import web

from ._errors import StoreError
from ._http import is_loopback
from ._inspector import add_inspector
from ._proxy import proxy_app
from ._rest import add_state_api
from .stores import Store, open_store

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
    service.add_argument("--encrypt", action="store_true", help=_ENCRYPT_HELP)
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
    proxy.add_argument("--encrypt", action="store_true", help=_ENCRYPT_HELP)
    commands.add_parser("keygen", help="print a new random key for encryption, and its id")
    rekey = commands.add_parser(
        "rekey",
        help="re-seal every value under the first key of $INLINE_STATE_KEYS (or the"
        " file $INLINE_STATE_KEY_FILE names), in place; then the old keys can go",
    )
    rekey.add_argument("--store", required=True, help="store URL (sqlite:// or redis://)")
    copy = commands.add_parser(
        "copy",
        help="copy every record between two stores, keeping stamps, eTags and expiries"
        " (safe to run again, and under traffic)",
    )
    copy.add_argument("--from", dest="source", required=True, help="store URL to copy from")
    copy.add_argument("--to", dest="target", required=True, help="store URL to copy into")
    return parser


_ENCRYPT_HELP = (
    "seal stored values with the keys of $INLINE_STATE_KEYS or of the file"
    " $INLINE_STATE_KEY_FILE names (the encryption extra)"
)


def _key_ring() -> Any:
    from ._seal import KeyRing, KeyRingError

    try:
        return KeyRing.load()
    except KeyRingError as exc:
        raise SystemExit(f"inline_state: {exc}") from None


def _lasting_store(url: str, what: str, *, existing: bool = False) -> Store:
    if url.startswith("memory:"):
        raise SystemExit(
            f"{what}: memory:// lives in one process; give a sqlite:// or redis:// URL"
        )
    try:
        store = open_store(url)
    except (ValueError, ImportError) as exc:
        raise SystemExit(f"{what}: {exc}") from None
    path = getattr(store, "path", None)
    if existing and path is not None and not os.path.exists(path):  # a mistyped path
        raise SystemExit(f"{what}: no such SQLite file: {os.fspath(path)!r}")
    return store


def _progress(line: str, *, done: bool = False) -> None:
    if sys.stderr.isatty():
        print(f"\r{line}", end="\n" if done else "", file=sys.stderr, flush=True)
    elif done:
        print(line, file=sys.stderr, flush=True)


async def rekey_command(url: str) -> bool:
    """Re-seal the store at ``url`` under the key ring's sealing key, printing progress;
    False when it is not done (old keys still needed)."""
    from .stores.sealed import SealedStore, rekey

    keys = _key_ring()
    store = SealedStore(_lasting_store(url, "rekey", existing=True), keys)

    def show(seen: int, resealed: int) -> None:
        _progress(f"rekey: {seen} records read, {resealed} re-sealed under key {keys.current_id}")

    async with store:
        result = await rekey(store, progress=show)
    old = {i: n for i, n in result.found.items() if i != keys.current_id and n}
    summary = ", ".join(f"{n} under {ident}" for ident, n in sorted(old.items())) or "none"
    _progress(f"rekey: values not under key {keys.current_id} before: {summary}", done=True)
    for encoded in result.unreadable:
        print(f"rekey: does not open: {encoded!r}", file=sys.stderr)
    if result.unreadable_count:
        print(
            f"rekey: {result.unreadable_count} records do not open (tampered, or sealed under"
            " a key not in the ring): delete or overwrite them, then run rekey again",
            file=sys.stderr,
        )
    if result.left:
        left = ", ".join(f"{n} under {ident}" for ident, n in sorted(result.left.items()))
        print(f"rekey: still {left}: keep those keys and run rekey again", file=sys.stderr)
    if result.done:
        print("rekey: done; the old keys can go", file=sys.stderr)
    return result.done


async def copy_command(source_url: str, target_url: str) -> Any:
    """Copy every record of one store into another, printing progress."""
    from .stores._copying import Copied, copy_records
    from .stores.sealed import hash_keys_of, holds_records

    source = _lasting_store(source_url, "copy --from", existing=True)
    target = _lasting_store(target_url, "copy --to")

    def show(copied: Copied) -> None:
        _progress(
            f"copy: {copied.records} records read, {copied.changed} written,"
            f" {copied.deletions} deletion stamps"
        )

    async with source, target:
        hashed, into = await hash_keys_of(source), await hash_keys_of(target)
        if hashed != into and await holds_records(target):
            raise SystemExit(
                "copy: the source keeps ids and names "
                + (f"hashed under hash key {sorted(hashed)[0]}" if hashed else "in the clear")
                + " and the target "
                + (f"hashed under hash key {sorted(into)[0]}" if into else "in the clear")
                + ": copy into an empty store"
            )
        copied = await copy_records(source, target, progress=show)
    show(copied)
    _progress("copy: done", done=True)
    return copied


def proxy_app_from(args: argparse.Namespace) -> web.Application:
    """The proxy's app for parsed arguments."""
    from ._engine import Engine

    encryption = _key_ring() if args.encrypt else None
    return proxy_app(
        upstream=args.upstream,
        engine=Engine.create(args.store, encryption=encryption),
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
    if args.encrypt:
        from .stores.sealed import SealedStore

        store = SealedStore(store, _key_ring())

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
    if args.command == "keygen":
        from ._seal import key_id, new_key

        key = new_key()
        print(key)
        print(f"key id {key_id(base64.b64decode(key))}", file=sys.stderr)
        return
    try:
        if args.command == "rekey":
            if not asyncio.run(rekey_command(args.store)):
                raise SystemExit(1)
            return
        if args.command == "copy":
            asyncio.run(copy_command(args.source, args.target))
            return
    except (StoreError, ValueError) as exc:  # a store's error, a key ring's (KeyRingError)
        raise SystemExit(f"inline_state {args.command}: {exc}") from None
    host, port = args.listen
    app = state_service_app(args) if args.command == "state-service" else proxy_app_from(args)
    web.run_app(app, host=host, port=port)


if __name__ == "__main__":
    main()
