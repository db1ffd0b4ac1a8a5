"""The hostile-input storm (tests/storm.py), bounded for CI: 10,000 requests."""

from __future__ import annotations

from pathlib import Path

from .redis_servers import RedisServer
from .storm import run_storm


async def test_a_storm_of_hostile_requests_breaks_nothing(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    report = await run_storm(
        seed=20261201,
        requests=10_000,
        redis_url=f"redis://127.0.0.1:{redis_server.port}",
        directory=tmp_path,
    )
    assert report.requests == 10_000
    assert not report.failures, "\n".join(report.failures)
    # The storm is hostile enough to reach every kind of answer.
    assert {200, 400, 401, 413, 500} <= set(report.statuses) or {200, 400, 401, 500} <= set(
        report.statuses
    ), report.statuses
