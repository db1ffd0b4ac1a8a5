"""Real redis-server processes on free loopback ports: one node, or a cluster of three
masters (with a replica each if asked)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from .support import free_port, stop_process


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(
            f"{name} is not installed: the Redis tests need a real server"
            " (Debian: apt-get install redis-server)"
        )
    return path


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith((b"+PONG", b"-NOAUTH"))  # alive, maybe locked
    except OSError:
        return False


class RedisServer:
    """One redis-server; ``stop()`` and ``start()`` again on the same port and data."""

    def __init__(self, directory: Path, *extra: str, cluster_bus: bool = False) -> None:
        self.directory = directory
        self.extra = extra
        self.port = 0
        # A cluster node's bus port, picked with its port on each try until one starts
        # (picked earlier, another node's port could take it), then kept for restarts.
        self.cluster_bus = cluster_bus
        self.bus_port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, port: int | None = None) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            self.port = port or free_port()
            bus: tuple[str, ...] = ()
            if self.cluster_bus:
                self.bus_port = self.bus_port if port is not None else free_port()
                bus = ("--cluster-port", str(self.bus_port))
            self.process = subprocess.Popen(
                [
                    _binary("redis-server"),
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.directory),
                    "--logfile",
                    str(self.directory / "redis.log"),
                    "--loglevel",
                    "warning",
                    *self.extra,
                    *bus,
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.process.poll() is None:
                if _ping(self.port):
                    return self
                time.sleep(0.02)
            self.stop()
            if port is not None:
                break
        log = self.directory / "redis.log"
        raise RuntimeError(
            f"redis-server did not start: {log.read_text() if log.exists() else 'no log'}"
        )

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None


class RedisCluster:
    """Three masters and ``replicas`` replicas of each, created with ``redis-cli --cluster
    create``."""

    def __init__(self, directory: Path, replicas: int = 0) -> None:
        self.replicas = replicas
        self.nodes = [
            RedisServer(
                directory / f"node{i}",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(directory / f"node{i}" / "nodes.conf"),
                "--cluster-node-timeout",
                "2000",
                cluster_bus=True,
            )
            for i in range(3 * (1 + replicas))
        ]

    @property
    def port(self) -> int:
        return self.nodes[0].port

    def start(self) -> RedisCluster:
        try:
            return self._start()
        except BaseException:
            self.stop()  # no redis-server outlives a cluster that did not come up
            raise

    def _start(self) -> RedisCluster:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [
                _binary("redis-cli"),
                "--cluster",
                "create",
                *(f"127.0.0.1:{node.port}" for node in self.nodes),
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            states = [
                subprocess.run(
                    [_binary("redis-cli"), "-p", str(node.port), "cluster", "info"],
                    capture_output=True,
                    text=True,
                    timeout=5,
                ).stdout
                for node in self.nodes
            ]
            if all("cluster_state:ok" in state for state in states) and self._replicas_in_sync():
                return self
            time.sleep(0.1)
        raise RuntimeError("the Redis cluster did not reach cluster_state:ok")

    def cli(self, port: int, *args: str) -> str:
        """What ``redis-cli -p port args...`` prints."""
        return subprocess.run(
            [_binary("redis-cli"), "-p", str(port), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout

    def _replicas_in_sync(self) -> bool:
        replicas = [
            n for n in self.nodes if "role:slave" in self.cli(n.port, "info", "replication")
        ]
        if len(replicas) != 3 * self.replicas:
            return False
        return all(
            "master_link_status:up" in self.cli(n.port, "info", "replication") for n in replicas
        )

    def master_of_slot(self, slot: int) -> RedisServer:
        """The node that serves ``slot`` now."""
        for line in self.cli(self.port, "cluster", "nodes").splitlines():
            fields = line.split()
            if "master" not in fields[2] or "fail" in fields[2]:
                continue
            for part in fields[8:]:
                low, _, high = part.partition("-")
                if not low.isdigit():
                    continue
                if int(low) <= slot <= int(high or low):
                    port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
                    return next(n for n in self.nodes if n.port == port)
        raise LookupError(f"no master serves slot {slot}")

    def replica_of(self, master: RedisServer) -> RedisServer:
        """A replica of ``master``."""
        master_id = self.cli(master.port, "cluster", "myid").strip()
        for line in self.cli(self.port, "cluster", "nodes").splitlines():
            fields = line.split()
            if "slave" in fields[2] and fields[3] == master_id:
                port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
                return next(n for n in self.nodes if n.port == port)
        raise LookupError(f"no replica of the node on port {master.port}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
