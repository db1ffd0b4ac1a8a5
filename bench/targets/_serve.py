"""Shared launcher: ``python <target>.py --port N [target flags]``; no access log."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

from aiohttp import web


def serve(
    make_app: Callable[[argparse.Namespace], web.Application],
    add_args: Callable[[argparse.ArgumentParser], None] | None = None,
) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    if add_args:
        add_args(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    # Per-request access logging would dominate what we measure.
    web.run_app(make_app(args), host=args.host, port=args.port, access_log=None, print=None)
