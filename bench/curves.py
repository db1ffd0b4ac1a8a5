#!/usr/bin/env python3
"""How a turn's cost grows with the work: stored users and bag size, plotted.

- turn cost with 10,000 vs 1,000,000 stored users (memory, redis), each turn on one of
  10,000 active users;
- turn cost with user bags of 100 B, 4 KiB and 60 KiB where each turn changes one
  property (a counter) and leaves the rest as it was.
Each point is the median of --rounds runs of bench/run.py's measurement, with the
baseline measured in the same run. Writes bench/results/curves.json and the plot the
README shows, bench/curves.png.

    python bench/curves.py [--rounds 3] [--duration 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import run  # bench/run.py

HERE = Path(__file__).resolve().parent


def measure(target: str, a: argparse.Namespace, redis: run.Redis | None, **overrides: Any) -> dict[str, float]:
    args = argparse.Namespace(**{**vars(a), **overrides})
    rounds = []
    with tempfile.TemporaryDirectory(prefix="inline-state-curves-") as tmp:
        for _ in range(a.rounds):
            rounds.append(run.one_run(target, args, Path(tmp), redis))
    return {
        "cpu_us_per_turn": statistics.median(r["cpu_us_per_turn"] for r in rounds),
        "rps": statistics.median(r["rps"] for r in rounds),
        "errors": sum(r["errors"] for r in rounds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5)
    parser.add_argument("--users", type=int, nargs=2, default=[10_000, 1_000_000])
    parser.add_argument("--bags", type=int, nargs="+", default=[100, 4096, 61440])
    parser.add_argument("--targets", default="memory,redis", help="comma list of stores")
    parser.add_argument("--bag-users", type=int, default=10_000,
                        help="active users of the bag-size points (300 keeps 60 KiB bags"
                        " within memory://'s default cache)")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--png", default=str(HERE / "curves.png"))
    a = parser.parse_args()
    base = argparse.Namespace(
        rounds=a.rounds, duration=a.duration, warmup=2, threads=2, connections=64, users=10_000,
        convs=0, prime=True, c1=0, rate=0, bag_bytes=0, seed_users=0, server_cpu="0", wrk_cpu="1",
    )
    out: dict[str, Any] = {"args": vars(a), "users": {}, "bags": {}}
    with tempfile.TemporaryDirectory(prefix="inline-state-redis-") as tmp:
        redis = run.Redis(base.wrk_cpu, Path(tmp))
        try:
            out["baseline"] = measure("baseline", base, None)
            print("baseline", out["baseline"], flush=True)
            targets = a.targets.split(",")
            for target in targets:
                for stored in a.users:
                    seed = max(stored - base.users, 0)
                    point = measure(target, base, redis, seed_users=seed)
                    out["users"].setdefault(target, {})[stored] = point
                    print(target, stored, "stored users", point, flush=True)
            for target in targets:
                for size in a.bags:
                    point = measure(target, base, redis, bag_bytes=size, users=a.bag_users)
                    out["bags"].setdefault(target, {})[size] = point
                    print(target, size, "byte bags", point, flush=True)
        finally:
            redis.stop()
    folder = Path(a.out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "curves.json").write_text(json.dumps(out, indent=1))
    plot(out, Path(a.png))
    print(f"wrote {folder / 'curves.json'} and {a.png}")


def plot(out: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("matplotlib is not installed (pip install matplotlib): no plot; the numbers are in curves.json") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    baseline = out["baseline"]["cpu_us_per_turn"]
    for target, points in out["users"].items():
        xs = sorted(points, key=int)
        left.plot([int(x) for x in xs], [points[x]["cpu_us_per_turn"] for x in xs], marker="o", label=target)
    left.axhline(baseline, color="grey", linestyle="--", label="baseline (no state library)")
    left.set_xscale("log")
    left.set_xlabel("stored users")
    left.set_ylabel("server CPU per turn (us)")
    left.set_title("cost vs stored users")
    left.legend()
    for target, points in out["bags"].items():
        xs = sorted(points, key=int)
        right.plot([int(x) / 1024 for x in xs], [points[x]["cpu_us_per_turn"] for x in xs], marker="o", label=target)
    right.axhline(baseline, color="grey", linestyle="--", label="baseline")
    right.set_xlabel("user bag size (KiB); each turn changes one counter")
    right.set_ylabel("server CPU per turn (us)")
    right.set_title("cost vs bag size")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
