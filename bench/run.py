#!/usr/bin/env python3
"""Throughput, latency and memory of inline_state against a plain aiohttp bot.

For each round, for each target in order (A B C A B C ...): start the target on a free
loopback port pinned to CPU 0, touch every one of --users users once, warm up, drive load
with wrk pinned to CPU 1 at --connections, then one connection for unloaded latency;
wait for the server to go idle between phases (when wrk stops, up to --connections
requests are still queued in the server). Prints medians, spreads and ratios to the
first target as a markdown table, and writes all raw results as JSON.

Targets: baseline (dict state, no middleware), memory, sqlite, redis (a redis-server
this script starts, pinned with wrk to CPU 1; SQLite's writer thread runs in the server
process on CPU 0), redis-cluster (a cluster of three masters this script starts, pinned
the same way), agents (Microsoft 365 Agents SDK 1.9.0 with its own state;
agents-inline: the same bot with its counters in inline state, memory://) and
botbuilder (botbuilder-python 4.17.1's UserState/ConversationState; -patched with the
msrest hotspot fixed); the SDKs run from venvs this script creates under bench/.venvs.
Needs wrk and taskset; redis-server (and redis-cli) for the redis targets.

    python bench/run.py                       # the full run
    python bench/run.py --smoke               # one short round: baseline and memory
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
LUA = HERE / "wrk" / "messages.lua"
KNOWN = (
    "baseline", "baseline-orjson", "floor", "memory", "memory-plain", "memory-cold", "sqlite",
    "memory-sealed", "sqlite-sealed", "memory-hashed", "sqlite-hashed", "redis", "redis-cluster",
    "agents", "agents-inline", "botbuilder",
    "botbuilder-patched",
)
REPO = HERE.parent
# The SDKs get venvs of their own, created on first use: their pins must not mix with ours.
SDK_VENVS = {
    "agents": [
        "microsoft-agents-hosting-aiohttp==1.9.0",
        "microsoft-agents-hosting-core==1.9.0",
        "microsoft-agents-authentication-msal==1.9.0",
        "-e", str(REPO),  # inline_state itself, for the agents-inline target
    ],
    "botbuilder": ["botbuilder-core==4.17.1", "botbuilder-integration-aiohttp==4.17.1"],
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pinned(cpu: str | None, cmd: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *cmd] if cpu else cmd


def redis_command(port: int, command: bytes) -> bytes:
    """One inline command's reply (enough of it for FLUSHALL, INFO, CLUSTER INFO)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(command + b"\r\n")
        reply = s.recv(65536)
        if reply.startswith(b"$"):  # a bulk string: read all of it
            size = int(reply[1:reply.index(b"\r\n")])
            while len(reply) < reply.index(b"\r\n") + 2 + size:
                reply += s.recv(65536)
        return reply


class Redis:
    """Throwaway redis-servers: one for the redis target, a cluster of three masters for
    redis-cluster (every node pinned with wrk to CPU 1)."""

    def __init__(self, cpu: str | None, workdir: Path, masters: int = 0) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            sys.exit("the redis targets need redis-server (apt-get install redis-server)")
        self.ports = [free_port() for _ in range(max(masters, 1))]
        self.procs = []
        for port in self.ports:
            directory = workdir / f"redis-{port}"
            directory.mkdir()
            cluster = ["--cluster-enabled", "yes", "--cluster-port", str(free_port())] if masters else []
            self.procs.append(subprocess.Popen(
                pinned(cpu, [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(directory), "--loglevel", "warning",
                             *cluster]),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
        for port in self.ports:
            self._wait(port, lambda: redis_command(port, b"PING").startswith(b"+PONG"))
        if masters:
            subprocess.run(["redis-cli", "--cluster", "create",
                            *(f"127.0.0.1:{p}" for p in self.ports), "--cluster-yes"],
                           check=True, capture_output=True, timeout=60)
            for port in self.ports:
                self._wait(port, lambda: b"cluster_state:ok" in redis_command(port, b"CLUSTER INFO"))
        self.url = f"{'redis+cluster' if masters else 'redis'}://127.0.0.1:{self.ports[0]}"

    @staticmethod
    def _wait(port: int, ready: Any) -> None:
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                if ready():
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {port} did not come up")

    def flush(self) -> None:
        for port in self.ports:
            redis_command(port, b"FLUSHALL")

    def used_memory(self) -> int:
        """``used_memory`` from ``INFO memory`` (summed over a cluster's nodes): what
        Redis's allocator holds for data."""
        total = 0
        for port in self.ports:
            reply = redis_command(port, b"INFO memory")
            line = next(x for x in reply.split(b"\r\n") if x.startswith(b"used_memory:"))
            total += int(line.split(b":")[1])
        return total

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(10)


def sdk_python(sdk: str) -> str:
    """The interpreter of an SDK's own venv under bench/.venvs, created on first use."""
    venv = HERE / ".venvs" / sdk
    python = venv / "bin" / "python"
    marker = venv / ".installed"
    wanted = " ".join(SDK_VENVS[sdk])
    if not marker.exists() or marker.read_text() != wanted:
        print(f"installing {wanted} into {venv} (once)", flush=True)
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *SDK_VENVS[sdk]], check=True)
        marker.write_text(wanted)
    return str(python)


def command(name: str, a: argparse.Namespace, workdir: Path, redis: Redis | None) -> list[str]:
    """The target's command line (``redis``: the servers of this target, if it has any)."""
    py = sys.executable
    if name.startswith("agents"):
        inline = ["--inline-state"] if name == "agents-inline" else []
        return [sdk_python("agents"), str(HERE / "targets" / "agents_state.py"), *inline]
    if name.startswith("botbuilder"):
        patch = ["--patch-msrest"] if name == "botbuilder-patched" else []
        return [sdk_python("botbuilder"), str(HERE / "targets" / "botbuilder_state.py"), *patch]
    inline = [py, str(HERE / "targets" / "inline.py"), "--bag-bytes", str(a.bag_bytes),
              "--seed-users", str(a.seed_users)]
    if name == "baseline":
        return [py, str(HERE / "targets" / "baseline.py")]
    if name == "baseline-orjson":
        return [py, str(HERE / "targets" / "baseline_orjson.py")]
    if name == "floor":
        # The design sketch of ../shared/bench-reference, run in place (a measuring stick).
        sketch = HERE.parent.parent / "shared" / "bench-reference" / "targets" / "floor_prototype.py"
        if not sketch.exists():
            raise SystemExit(f"the floor target needs {sketch}")
        return [py, str(sketch), "--json", "orjson"]
    if name == "memory":
        return [*inline, "--store", "memory://"]
    if name == "memory-plain":
        return [*inline, "--store", "memory://", "--api", "plain"]
    if name == "memory-cold":
        # A cache bound of a tenth of the working set (about 1 KiB counted per record, three
        # records per user): most turns decode their records and pack others out.
        return [*inline, "--store", "memory://", "--cache-bytes", str(a.users * 3 * 1000 // 10)]
    sealing = {"-sealed": ["--encrypt"], "-hashed": ["--encrypt", "--hash-ids"]}
    if name in ("memory-sealed", "memory-hashed"):
        return [*inline, "--store", "memory://", *sealing[name[len("memory") :]]]
    if name in ("sqlite", "sqlite-sealed", "sqlite-hashed"):
        db = workdir / f"bench-{time.monotonic_ns()}.db"
        return [*inline, "--store", f"sqlite:///{db}", *sealing.get(name[len("sqlite") :], [])]
    if name.startswith("redis"):
        assert redis is not None
        redis.flush()
        return [*inline, "--store", redis.url]
    raise ValueError(name)


class Server:
    def __init__(self, cmd: list[str], cpu: str | None, log: Path) -> None:
        self.port = free_port()
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            pinned(cpu, [*cmd, "--port", str(self.port)]), stdout=self.log, stderr=subprocess.STDOUT
        )
        self.url = f"http://127.0.0.1:{self.port}/api/messages"
        probe = json.dumps({"type": "message", "id": "probe", "channelId": "bench",
                            "deliveryMode": "expectReplies", "from": {"id": "probe"},
                            "recipient": {"id": "bot"}, "conversation": {"id": "probe"},
                            "text": "probe"}).encode()
        deadline = time.time() + 600  # seeding a million users takes a while
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{cmd} exited; see {log}")
            try:
                request = urllib.request.Request(self.url, probe, {"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=2) as response:
                    reply = json.load(response)
                assert reply["activities"][0]["text"].startswith("echo: probe"), reply
                return
            except (OSError, ValueError):
                if time.time() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def wrk(url: str, a: argparse.Namespace, *, seconds: float, conns: int, threads: int,
        limit: int = 0, rate_delay_ms: float = 0) -> dict[str, Any]:
    done = Path(tempfile.gettempdir()) / f"bench-wrk-done-{os.getpid()}"
    done.unlink(missing_ok=True)
    convs = a.users if a.convs == 0 else a.convs
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{max(1, int(seconds))}s", "--timeout", "30s",
           "-s", str(LUA), url, "--", str(a.users), str(convs), str(limit), str(threads), str(done),
           str(rate_delay_ms)]
    proc = subprocess.Popen(pinned(a.wrk_cpu, cmd), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    if limit:  # wrk sleeps for all of -d even after every thread stopped: interrupt it
        deadline = time.time() + seconds
        while proc.poll() is None and time.time() < deadline:
            if done.exists() and len(done.read_text().split()) >= threads:
                proc.send_signal(signal.SIGINT)
                break
            time.sleep(0.05)
    stdout, stderr = proc.communicate(timeout=seconds + 60)
    done.unlink(missing_ok=True)
    line = next((x for x in stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {stdout}\n{stderr}")
    result: dict[str, Any] = json.loads(line[len("RESULT "):])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["errors"] = sum(v for k, v in result.items() if k.startswith("err_"))
    return result


def quiesce(pid: int, timeout: float = 120) -> None:
    """Wait until the server has been idle for 0.2 s (at most one clock tick of CPU)."""
    deadline = time.time() + timeout
    previous = cpu_seconds(pid)
    while time.time() < deadline:
        time.sleep(0.2)
        current = cpu_seconds(pid)
        if current - previous <= 0.011:
            return
        previous = current
    raise RuntimeError("the server did not go idle")


def cache_stats(url: str) -> dict[str, int]:
    """A memory:// target's cache counters (its /cache-stats route)."""
    with urllib.request.urlopen(url.replace("/api/messages", "/cache-stats")) as answer:
        stats: dict[str, int] = json.loads(answer.read())
    return stats


def one_run(name: str, a: argparse.Namespace, workdir: Path, redis: Redis | None) -> dict[str, Any]:
    server = Server(command(name, a, workdir, redis), a.server_cpu, workdir / f"{name}.log")
    pid = server.proc.pid
    try:
        if a.prime:
            wrk(server.url, a, seconds=3600, conns=a.connections, threads=a.threads, limit=a.users)
            quiesce(pid)
        if a.warmup:
            wrk(server.url, a, seconds=a.warmup, conns=a.connections, threads=a.threads)
            quiesce(pid)
        stats0 = cache_stats(server.url) if name.startswith(("memory", "sqlite")) else None
        cpu0 = cpu_seconds(pid)
        result = wrk(server.url, a, seconds=a.duration, conns=a.connections, threads=a.threads)
        if stats0 is not None:
            stats = cache_stats(server.url)
            hits, decodes = stats["hits"] - stats0["hits"], stats["decodes"] - stats0["decodes"]
            result["cache_hit_ratio"] = hits / max(hits + decodes, 1)
        result["server_cpu"] = (cpu_seconds(pid) - cpu0) / (result["duration_us"] / 1e6)
        result["cpu_us_per_turn"] = result["server_cpu"] * 1e6 / max(result["rps"], 1)
        if a.c1:
            quiesce(pid)
            c1 = wrk(server.url, a, seconds=a.c1, conns=1, threads=1)
            result.update(c1_p50_us=c1["p50_us"], c1_p99_us=c1["p99_us"],
                          errors=result["errors"] + c1["errors"])
        if a.rate:
            quiesce(pid)
            # 16 connections, each pausing between requests: an open-ish load at a fixed
            # rate (a.rate requests/s over all connections). The pause is think time, so the
            # time a request takes lowers the rate: a short calibration run measures that
            # time at this load and the pause is shortened by it, until a probe lands within
            # 5 % of the rate (at most four: the time a request takes changes with the rate).
            conns = 16
            period = conns * 1000.0 / a.rate
            delay = period
            for _ in range(4):
                probe = wrk(server.url, a, seconds=min(a.duration, 2), conns=conns, threads=1,
                            rate_delay_ms=delay)
                quiesce(pid)
                if abs(probe["rps"] - a.rate) <= 0.05 * a.rate:
                    break
                per_request_ms = conns * 1000.0 / max(probe["rps"], 1) - delay
                delay = max(period - per_request_ms, 0.0)
            fixed = wrk(server.url, a, seconds=a.duration, conns=conns, threads=1, rate_delay_ms=delay)
            result.update(rate_rps=fixed["rps"], rate_p50_us=fixed["p50_us"],
                          rate_p99_us=fixed["p99_us"], errors=result["errors"] + fixed["errors"])
        result["rss_kib"] = rss_kib(pid)
        return result
    finally:
        server.stop()


def mem_run(name: str, a: argparse.Namespace, workdir: Path, redis: Redis | None) -> dict[str, Any]:
    server = Server(command(name, a, workdir, redis), a.server_cpu, workdir / f"{name}-mem.log")
    on_redis = redis is not None
    try:
        if on_redis:
            assert redis is not None
            redis_before = redis.used_memory()
        before = rss_kib(server.proc.pid)
        saved = a.users, a.convs
        a.users, a.convs = a.mem_users, 0
        try:
            result = wrk(server.url, a, seconds=3600, conns=a.connections, threads=a.threads,
                         limit=a.mem_users)
        finally:
            a.users, a.convs = saved
        time.sleep(1)
        after = rss_kib(server.proc.pid)
        out = {"rss_start_kib": before, "rss_kib": after, "requests": result["requests"],
               "errors": result["errors"], "bytes_per_user": (after - before) * 1024 / a.mem_users}
        if on_redis:
            assert redis is not None
            out["redis_bytes_per_user"] = (redis.used_memory() - redis_before) / a.mem_users
        return out
    finally:
        server.stop()


def median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r.get(key, 0) for r in runs))


def spread(runs: list[dict[str, Any]], key: str) -> str:
    values = [r[key] for r in runs]
    if len(values) < 2:
        return "-"
    return f"±{(max(values) - min(values)) / 2 / statistics.median(values) * 100:.0f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default="baseline,memory,sqlite,redis",
                        help=f"comma list, first = reference for ratios; known: {','.join(KNOWN)}")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--convs", type=int, default=0, help="distinct conversations (0 = one per user)")
    parser.add_argument("--no-prime", dest="prime", action="store_false")
    parser.add_argument("--c1", type=float, default=3, help="seconds of 1-connection latency (0 = skip)")
    parser.add_argument("--rate", type=float, default=0, help="fixed request rate for p99 (0 = skip)")
    parser.add_argument("--bag-bytes", type=int, default=0, help="extra unchanged bytes in the user bag")
    parser.add_argument("--seed-users", type=int, default=0,
                        help="inline targets: records of N other users stored before the run")
    parser.add_argument("--mem-users", type=int, default=0, help="RSS growth after N users (0 = skip)")
    parser.add_argument("--server-cpu", default="0")
    parser.add_argument("--wrk-cpu", default="1")
    parser.add_argument("--json", default=str(HERE / "results" / "latest.json"))
    parser.add_argument("--smoke", action="store_true",
                        help="one round of 1 s on baseline and memory (CI keeps the script working)")
    a = parser.parse_args()
    if a.smoke:
        a.targets, a.rounds, a.duration, a.warmup, a.c1, a.users = "baseline,memory", 1, 1, 0, 1, 200
    a.server_cpu, a.wrk_cpu = a.server_cpu or None, a.wrk_cpu or None
    names = a.targets.split(",")
    for name in names:
        if name not in KNOWN:
            sys.exit(f"unknown target {name}; known: {', '.join(KNOWN)}")
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")

    with tempfile.TemporaryDirectory(prefix="inline-state-bench-") as tmp:
        workdir = Path(tmp)
        servers: dict[str, Redis] = {}
        try:
            if "redis" in names:
                servers["redis"] = Redis(a.wrk_cpu, workdir)
            if "redis-cluster" in names:
                servers["redis-cluster"] = Redis(a.wrk_cpu, workdir, masters=3)
            runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
            for rnd in range(1, a.rounds + 1):
                for name in names:
                    r = one_run(name, a, workdir, servers.get(name))
                    runs[name].append(r)
                    print(f"round {rnd} {name:10s} {r['rps']:8.0f} req/s  p99 {r['p99_us'] / 1e3:6.2f} ms"
                          f"  cpu/turn {r['cpu_us_per_turn']:6.0f} us  errors {r['errors']}", flush=True)
            mem = {n: mem_run(n, a, workdir, servers.get(n)) for n in names} if a.mem_users else {}
        finally:
            for server in servers.values():
                server.stop()

    ref = names[0]
    print(f"\nMedians of {a.rounds} round(s): {a.duration:g} s per run, {a.connections} connections,"
          f" {a.users} users; ratio = turns/s relative to {ref} in the same run.\n")
    print("| target | turns/s | spread | ratio | CPU us/turn | p50 ms | p99 ms | 1-conn p50 ms | 1-conn p99 ms | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in names:
        print(f"| {n} | {median(runs[n], 'rps'):.0f} | {spread(runs[n], 'rps')} |"
              f" {median(runs[n], 'rps') / median(runs[ref], 'rps'):.2f}x |"
              f" {median(runs[n], 'cpu_us_per_turn'):.0f} | {median(runs[n], 'p50_us') / 1e3:.2f} |"
              f" {median(runs[n], 'p99_us') / 1e3:.2f} | {median(runs[n], 'c1_p50_us') / 1e3:.2f} |"
              f" {median(runs[n], 'c1_p99_us') / 1e3:.2f} | {sum(r['errors'] for r in runs[n])} |")
    ratios = [(n, median(runs[n], "cache_hit_ratio")) for n in names
              if n.startswith(("memory", "sqlite"))]
    if ratios:
        print("\ncache hit ratio in the measured phase (memory: records found decoded;"
              " sqlite: loads answered without reading the file): "
              + ", ".join(f"{n} {r:.1%}" for n, r in ratios))
    if a.rate:
        print(f"\np99 at a fixed {a.rate:g} requests/s:\n\n| target | achieved/s | p50 ms | p99 ms | p99 ratio |\n|---|---|---|---|---|")
        for n in names:
            print(f"| {n} | {median(runs[n], 'rate_rps'):.0f} | {median(runs[n], 'rate_p50_us') / 1e3:.2f} |"
                  f" {median(runs[n], 'rate_p99_us') / 1e3:.2f} |"
                  f" {median(runs[n], 'rate_p99_us') / max(median(runs[ref], 'rate_p99_us'), 1):.2f}x |")
    if mem:
        print(f"\nMemory growth after touching {a.mem_users} users (bot process RSS; for redis"
              " targets also Redis's used_memory from INFO memory):\n\n"
              "| target | bot RSS bytes/user | Redis bytes/user |\n|---|---|---|")
        for n, m in mem.items():
            in_redis = f"{m['redis_bytes_per_user']:.0f}" if "redis_bytes_per_user" in m else "-"
            print(f"| {n} | {m['bytes_per_user']:.0f} | {in_redis} |")
    errors = sum(r["errors"] for rs in runs.values() for r in rs)
    out = Path(a.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(a), "runs": runs, "mem": mem}, indent=1))
    print(f"\nraw results: {out}")
    if errors:
        sys.exit(f"{errors} request errors")


if __name__ == "__main__":
    main()
