"""Bytecodes executed per turn, per Python function: a profiling aid, not the benchmark.

Runs a target's app as ``turn_cost.py`` does (no HTTP), warms it up, then traces the
next turns with ``sys.settrace`` and ``f_trace_opcodes``, counting every bytecode each
function executes and every call. Exact and repeatable where timings on a shared VM are
not; ``instructions.sh`` turns the same turns into machine instructions.

    .venv/bin/python bench/bytecodes.py memory [--turns 200] [--top 40]
    .venv/bin/python bench/bytecodes.py memory --lines _diff.py:_fold_bag
    .venv/bin/python bench/bytecodes.py redis --concurrency 64 --redis-url redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import linecache
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))
import turn_cost  # noqa: E402  (bench/turn_cost.py)

WARMUP = 400


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target")
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--lines", help="file:function whose lines to count instead")
    parser.add_argument("--concurrency", type=int, default=1, help="turns run at a time")
    parser.add_argument("--redis-url", help="the redis target's server (its database is flushed)")
    a = parser.parse_args()

    by_function: collections.Counter[tuple[str, str]] = collections.Counter()
    calls: collections.Counter[tuple[str, str]] = collections.Counter()
    by_line: collections.Counter[int] = collections.Counter()
    wanted = tuple(a.lines.split(":", 1)) if a.lines else None
    path_of: dict[str, str] = {}

    def where(frame: FrameType) -> tuple[str, str]:
        code = frame.f_code
        path_of[code.co_filename.rsplit("/", 1)[-1]] = code.co_filename
        return code.co_filename.rsplit("/", 1)[-1], code.co_name

    def opcode(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "opcode":
            if wanted is None:
                by_function[where(frame)] += 1
            else:
                by_line[frame.f_lineno or 0] += 1
        return opcode

    def call(frame: FrameType, event: str, arg: Any) -> Any:
        if event != "call":
            return None
        name = where(frame)
        calls[name] += 1
        if wanted is not None and name != wanted:
            return None
        frame.f_trace_opcodes = True
        return opcode

    app = turn_cost.make_target(a.target, redis_url=a.redis_url)
    bodies = [turn_cost.activity(i, 200) for i in range(WARMUP + a.turns)]
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    requests = loop.run_until_complete(turn_cost._requests(app, bodies))
    loop.run_until_complete(turn_cost._turns(app, requests[:WARMUP], a.concurrency))
    sys.settrace(call)
    try:
        loop.run_until_complete(turn_cost._turns(app, requests[WARMUP:], a.concurrency))
    finally:
        sys.settrace(None)
    loop.run_until_complete(runner.cleanup())
    loop.close()

    n = a.turns
    if wanted is not None:
        path = path_of.get(wanted[0], "")
        for line, count in sorted(by_line.items()):
            print(f"{count / n:7.1f}  {line:5}  {linecache.getline(path, line).rstrip()}")
        return
    total = sum(by_function.values())
    print(f"{a.target}: {total / n:,.0f} bytecodes and {sum(calls.values()) / n:.0f} calls per turn")
    for (file, function), count in by_function.most_common(a.top):
        print(f"{count / n:7.1f}  {calls[(file, function)] / n:5.1f} calls  {file}:{function}")


if __name__ == "__main__":
    main()
