"""Soak under faults: load on sqlite:// and redis:// while the store and the bot fail.

    python -m tests.soak --duration 120     # seconds per store (make soak)

A bot process (tests/bots/soak_bot.py) answers turns that each write one unique
property into the user's bag; a ledger keeps every turn that was acknowledged (HTTP
200). Every 10 s a fault is injected, in turn:

- sqlite://: the file cannot grow (a full disk: ``max_page_count``) for 3 s; the bot
  process killed with SIGKILL and restarted.
- redis:// (``appendonly yes``, ``appendfsync always``, so an acknowledged write survives
  a SIGKILL): Redis killed with SIGKILL and restarted; Redis paused with SIGSTOP for
  3 s, past the store's 1 s timeout; the bot killed with SIGKILL and restarted.

At the end every acknowledged property must be in the store. The report gives turns,
faults, 503s, acknowledged writes lost (must be 0) and, per fault, the time from the
end of the fault to the next acknowledged turn. Only 127.0.0.1; it stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

import inline_state
from inline_state import RecordKey

from .redis_servers import RedisServer
from .support import REPO, RunningProcess

BOT = "soak-bot"
CHANNEL = "soak"


@dataclass
class Fault:
    name: str
    started: float = 0.0
    ended: float = 0.0
    recovered: float | None = None


@dataclass
class Phase:
    store: str
    turns: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    ledger: list[tuple[str, str]] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    lost: int = -1

    def summary(self) -> dict[str, Any]:
        faults: dict[str, dict[str, Any]] = {}
        for fault in self.faults:
            entry = faults.setdefault(
                fault.name,
                {"count": 0, "unrecovered": 0, "outage_s_max": 0.0, "recovery_s_max": 0.0},
            )
            entry["count"] += 1
            if fault.recovered is None:
                entry["unrecovered"] += 1
                continue
            # outage: from the fault's start to the next acknowledged turn; recovery: from
            # the moment the fault ended (restarted, resumed, space again) to that turn.
            entry["outage_s_max"] = max(
                entry["outage_s_max"], round(fault.recovered - fault.started, 3)
            )
            entry["recovery_s_max"] = max(
                entry["recovery_s_max"], round(fault.recovered - fault.ended, 3)
            )
        return {
            "store": self.store,
            "turns": self.turns,
            "acknowledged": len(self.ledger),
            "statuses": dict(self.statuses),
            "faults": faults,
            "unrecovered_faults": sum(f.recovered is None for f in self.faults),
            "acknowledged_writes_lost": self.lost,
        }


class BotProcess(RunningProcess):
    def __init__(self, store_url: str) -> None:
        script = REPO / "tests" / "bots" / "soak_bot.py"
        super().__init__(
            lambda port: [sys.executable, str(script), "--port", str(port), "--store", store_url]
        )

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(5)

    def restart(self) -> None:
        """Start again on the same port, so the load finds it."""
        self.process = subprocess.Popen(self.argv(self.port), stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the soak bot did not come back")


async def _load(phase: Phase, url: str, users: int, concurrency: int, stop: asyncio.Event) -> None:
    names = itertools.count()
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def worker() -> None:
            while not stop.is_set():
                user = f"user-{random.randrange(users)}"
                prop = f"p{next(names)}"
                activity = {
                    "type": "message",
                    "id": prop,
                    "channelId": CHANNEL,
                    "serviceUrl": "http://127.0.0.1:1/",
                    "conversation": {"id": f"conv-{user}"},
                    "from": {"id": user},
                    "recipient": {"id": BOT},
                    "deliveryMode": "expectReplies",
                    "text": prop,
                }
                phase.turns += 1
                try:
                    async with session.post(url, json=activity) as response:
                        await response.read()
                        status = str(response.status)
                except (aiohttp.ClientError, TimeoutError):
                    status = "no answer"
                    await asyncio.sleep(0.05)
                phase.statuses[status] += 1
                if status == "200":
                    phase.ledger.append((user, prop))
                    now = time.monotonic()
                    for fault in phase.faults:
                        if fault.recovered is None and fault.ended and now >= fault.ended:
                            fault.recovered = now

        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _verify(phase: Phase, store_url: str) -> None:
    wanted: dict[str, set[str]] = {}
    for user, prop in phase.ledger:
        wanted.setdefault(user, set()).add(prop)
    async with inline_state.open_store(store_url) as store:
        lost = 0
        users = sorted(wanted)
        for start in range(0, len(users), 200):
            batch = users[start : start + 200]
            keys = [RecordKey("user", BOT, CHANNEL, "", user) for user in batch]
            for user, record in zip(batch, await store.load(keys), strict=True):
                lost += len(wanted[user] - set(record.props))
    phase.lost = lost


async def _run_phase(
    phase: Phase,
    store_url: str,
    faults: list[tuple[str, Callable[[], Awaitable[None]]]],
    bot: BotProcess,
    duration: float,
    interval: float,
    users: int,
    concurrency: int,
) -> None:
    stop = asyncio.Event()
    load = asyncio.create_task(_load(phase, bot.url, users, concurrency, stop))
    started = time.monotonic()
    for name, inject in itertools.cycle(faults):
        await asyncio.sleep(interval)
        if time.monotonic() - started > duration:
            break
        fault = Fault(name, started=time.monotonic())
        phase.faults.append(fault)
        await inject()
        fault.ended = time.monotonic()
    await asyncio.sleep(3)  # the last fault's recovery
    stop.set()
    await load
    bot.stop()
    await _verify(phase, store_url)


async def soak(duration: float, interval: float, users: int, concurrency: int) -> list[Phase]:
    phases: list[Phase] = []
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)

        # -- sqlite:// -------------------------------------------------------------------
        sqlite_url = f"sqlite:///{directory}/soak.db"
        bot = BotProcess(sqlite_url).start()
        phase = Phase("sqlite")

        async def disk_full() -> None:
            async with aiohttp.ClientSession() as session:
                for on in ("1", "0"):
                    try:
                        url = bot.url.replace("/api/messages", "/fault/sqlite-full")
                        async with session.post(url, params={"on": on}) as answer:
                            await answer.read()
                    except aiohttp.ClientError:
                        pass
                    if on == "1":
                        await asyncio.sleep(3)

        async def kill_bot() -> None:
            await asyncio.to_thread(bot.kill)
            await asyncio.to_thread(bot.restart)

        await _run_phase(
            phase,
            sqlite_url,
            [("sqlite disk full 3 s", disk_full), ("bot SIGKILL", kill_bot)],
            bot,
            duration,
            interval,
            users,
            concurrency,
        )
        phases.append(phase)

        # -- redis:// --------------------------------------------------------------------
        redis = RedisServer(
            directory / "redis", "--appendonly", "yes", "--appendfsync", "always"
        ).start()
        try:
            redis_url = f"redis://127.0.0.1:{redis.port}?prefix=soak"
            bot = BotProcess(redis_url).start()
            phase = Phase("redis")

            async def kill_redis() -> None:
                assert redis.process is not None
                redis.process.send_signal(signal.SIGKILL)
                redis.process.wait(5)
                await asyncio.to_thread(redis.start, redis.port)

            async def pause_redis() -> None:
                assert redis.process is not None
                redis.process.send_signal(signal.SIGSTOP)
                await asyncio.sleep(3)
                redis.process.send_signal(signal.SIGCONT)

            await _run_phase(
                phase,
                redis_url,
                [
                    ("redis SIGKILL", kill_redis),
                    ("redis SIGSTOP 3 s", pause_redis),
                    ("bot SIGKILL", kill_bot),
                ],
                bot,
                duration,
                interval,
                users,
                concurrency,
            )
            phases.append(phase)
        finally:
            redis.stop()
    return phases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=120.0, help="seconds per store")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between faults")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--json", type=Path, help="write the report here too")
    args = parser.parse_args(argv)
    phases = asyncio.run(soak(args.duration, args.interval, args.users, args.concurrency))
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "command": "python -m tests.soak " + " ".join(argv or sys.argv[1:]),
        "cpus": os.cpu_count(),
        "phases": [p.summary() for p in phases],
    }
    print(json.dumps(report, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if all(p.lost == 0 and not p.summary()["unrecovered_faults"] for p in phases) else 1


if __name__ == "__main__":
    sys.exit(main())
