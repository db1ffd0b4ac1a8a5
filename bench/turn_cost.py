"""CPU per turn inside one process, without HTTP: a profiling aid, not the benchmark.

Builds each bench target's app, then calls its middleware chain and handler directly
on requests made with aiohttp's ``make_mocked_request`` (a body on a real
StreamReader), many times, and prints the CPU microseconds per turn. What it leaves
out (the HTTP parser, the socket, the response writer) is the same for every target, so
differences between targets are what the middleware and the bot cost.

    .venv/bin/python bench/turn_cost.py [--turns 20000] [--profile memory]
    .venv/bin/python bench/turn_cost.py --targets memory,redis --concurrency 64 \
        --redis-url redis://127.0.0.1:6379/0    # a redis-server of yours, flushed first

``--concurrency N`` runs N turns at a time (a remote store batches their commands).

Instructions instead of seconds (repeatable on a noisy machine): ``bench/instructions.sh``
runs it under ``valgrind --tool=callgrind --collect-atstart=no
--toggle-collect=sys_call_tracing``, which counts the turns' instructions only.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import streams, web
from aiohttp.test_utils import make_mocked_request

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "targets"))


def activity(i: int, users: int) -> bytes:
    user = f"u{i % users}"
    return json.dumps(
        {
            "type": "message",
            "id": f"m{i}",
            "channelId": "bench",
            "serviceUrl": "http://127.0.0.1:1/",
            "conversation": {"id": f"c{i % users}"},
            "from": {"id": user, "name": "User"},
            "recipient": {"id": "bot", "name": "Bot"},
            "deliveryMode": "expectReplies",
            "text": "hello",
        }
    ).encode()


def make_target(name: str, bag_bytes: int = 0, redis_url: str | None = None) -> web.Application:
    args = argparse.Namespace(
        store="memory://", bag_bytes=bag_bytes, seed_users=0, api="fast", cache_bytes=None
    )
    if name == "redis":
        if not redis_url:
            raise SystemExit(
                "the redis target needs --redis-url redis://host:port/db (or redis+cluster://)"
            )
        import redis
        from redis.cluster import RedisCluster

        if redis_url.startswith("redis+cluster://"):  # every master's keys
            where = urlsplit(redis_url)
            RedisCluster(host=where.hostname, port=where.port or 6379).flushall()
        else:
            redis.Redis.from_url(redis_url).flushdb()
        args.store = redis_url
    if name == "baseline":
        import baseline

        return baseline.make_app(args)
    if name == "baseline-orjson":
        import baseline_orjson

        return baseline_orjson.make_app(args)
    if name == "floor":  # the design sketch in ../shared (a measuring stick)
        sys.path.insert(0, str(HERE.parent.parent / "shared" / "bench-reference" / "targets"))
        import floor_prototype

        return floor_prototype.make_app(argparse.Namespace(json="orjson"))
    import inline

    args.api = "plain" if name == "memory-plain" else "fast"
    args.no_metrics = name == "memory-nometrics"
    args.increments = name in ("memory-incr", "sqlite-incr")
    args.encrypt = name in ("memory-sealed", "sqlite-sealed", "memory-hashed", "sqlite-hashed")
    args.hash_ids = name in ("memory-hashed", "sqlite-hashed")
    if name in ("sqlite", "sqlite-incr", "sqlite-sealed", "sqlite-hashed"):  # a fresh file, removed with its temporary dir
        args.store = f"sqlite:///{tempfile.mkdtemp(prefix='inline_state-bench-')}/state.db"
    return inline.make_app(args)


def drive(
    app: web.Application,
    bodies: list[bytes],
    profile: cProfile.Profile | None = None,
    concurrency: int = 1,
) -> float:
    """Run every body through the app once; CPU seconds of the turns alone."""
    loop = asyncio.new_event_loop()
    try:
        runner = web.AppRunner(app)
        loop.run_until_complete(runner.setup())  # startup contexts: the store opens
        requests = loop.run_until_complete(_requests(app, bodies))
        gc.collect()
        if profile is not None:
            profile.enable()
        started = time.process_time()
        # The turns run inside sys.call_tracing, a C function nothing else calls: under
        # callgrind, --toggle-collect=sys_call_tracing counts these instructions only.
        sys.call_tracing(loop.run_until_complete, (_turns(app, requests, concurrency),))
        elapsed = time.process_time() - started
        if profile is not None:
            profile.disable()
        loop.run_until_complete(runner.cleanup())
    finally:
        loop.close()
    return elapsed


async def _requests(app: web.Application, bodies: list[bytes]) -> list[web.Request]:
    loop = asyncio.get_running_loop()
    protocol: Any = type(
        "Protocol",
        (),
        {
            "_reading_paused": False,
            "resume_reading": lambda *a, **k: None,
            "pause_reading": lambda *a, **k: None,
        },
    )()
    template = make_mocked_request(
        "POST", "/api/messages", headers={"Content-Type": "application/json"}, app=app
    )
    requests = []
    for body in bodies:
        payload = streams.StreamReader(protocol, 2**16, loop=loop)
        payload.feed_data(body)
        payload.feed_eof()
        # A clone shares the template's (mocked) transport, so no mock runs per turn.
        request = template.clone(headers={"Content-Type": "application/json"})
        request._payload = payload
        requests.append(request)
    return requests


async def _turns(app: web.Application, requests: list[web.Request], concurrency: int) -> None:
    handler = app._handle

    async def turn(request: web.Request) -> None:
        response = await handler(request)
        if isinstance(response, web.Response) and hasattr(response, "encode"):
            response.encode()  # a ReplyResponse is serialized when sent

    if concurrency == 1:
        for request in requests:
            await turn(request)
        return
    for start in range(0, len(requests), concurrency):
        await asyncio.gather(*(turn(r) for r in requests[start : start + concurrency]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--targets", default="baseline,baseline-orjson,memory,memory-plain")
    parser.add_argument("--profile", help="a target to run under cProfile instead")
    parser.add_argument("--sort", default="tottime", help="the profile's order (ncalls...)")
    parser.add_argument("--lines", type=int, default=45)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--bag-bytes", type=int, default=0, help="inline targets: user bag padding")
    parser.add_argument("--concurrency", type=int, default=1, help="turns run at a time")
    parser.add_argument("--redis-url", help="the redis target's server (its database is flushed)")
    a = parser.parse_args()
    bodies = [activity(i, a.users) for i in range(a.turns)]
    if a.profile:
        app = make_target(a.profile, a.bag_bytes, a.redis_url)
        profile = cProfile.Profile()
        drive(app, bodies, profile, a.concurrency)
        stats = pstats.Stats(profile)
        stats.sort_stats(a.sort).print_stats(a.lines)
        return
    names = a.targets.split(",")
    costs: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(a.repeat):  # interleaved: A B A B, so drift on the machine hits both
        for name in names:
            app = make_target(name, a.bag_bytes, a.redis_url)
            costs[name].append(drive(app, bodies, concurrency=a.concurrency) / a.turns * 1e6)
    for name in names:
        runs = ", ".join(f"{c:.1f}" for c in costs[name])
        print(f"{name:16} {min(costs[name]):7.1f} us/turn (best of {a.repeat}; runs {runs})")


if __name__ == "__main__":
    main()
