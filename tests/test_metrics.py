"""Prometheus metrics (``add_metrics``) of real turns through a real aiohttp app."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import inline_state
from inline_state import Change, Engine, MemoryStore, RecordKey, UserRef

from .redis_servers import RedisServer
from .support import REPO, Client, activity, post

StartFn = Callable[[web.Application], Awaitable[Client]]
USER = RecordKey("user", "bot-1", "test", "", "user-1")


def counting_bot(store: str | inline_state.Store, **metrics: Any) -> web.Application:
    app = web.Application()
    inline_state.setup(app, store)
    inline_state.add_metrics(app, **metrics)

    async def handler(request: web.Request) -> web.Response:
        msg = await request.json()
        reply = inline_state.create_reply(msg, "ok")
        inline_state.set_user_data(reply, "n", inline_state.get_user_data(msg, "n", 0) + 1)
        return web.json_response(reply)

    app.router.add_post("/api/messages", handler)
    return app


async def scrape(
    client: Client, path: str = "/metrics"
) -> dict[tuple[str, tuple[Any, ...]], float]:
    """Every sample of a scrape: (name, sorted labels) -> value."""
    response = await client.get(path)
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(await response.text()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def test_turns_store_calls_and_changes_are_counted(client_for: StartFn) -> None:
    client = await client_for(counting_bot(MemoryStore()))
    for _ in range(3):
        status, _ = await post(client, activity())
        assert status == 200
    samples = await scrape(client)
    load = (("backend", "memory"), ("operation", "load"))
    apply = (("backend", "memory"), ("operation", "apply"))
    assert samples[("inline_state_turns_total", ())] == 3
    assert samples[("inline_state_store_seconds_count", load)] == 3
    assert samples[("inline_state_store_seconds_count", apply)] == 3
    every = tuple(sorted((*load, ("le", "+Inf"))))
    assert samples[("inline_state_store_seconds_bucket", every)] == 3
    assert 0 < samples[("inline_state_store_seconds_sum", load)] < 3
    assert samples[("inline_state_store_unavailable_total", load)] == 0
    assert samples[("inline_state_changes_total", (("result", "applied"),))] == 3
    assert samples[("inline_state_changes_total", (("result", "stale"),))] == 0
    assert samples[("inline_state_change_bytes_count", ())] == 3
    assert samples[("inline_state_change_bytes_sum", ())] == 3  # "1", "2", "3"
    hits = samples[("inline_state_cache_lookups_total", (("backend", "memory"), ("result", "hit")))]
    assert hits == 2, "the second and third turns found the record decoded"


async def test_races_lost_and_changes_older_than_a_deletion_are_counted() -> None:
    engine = Engine.create(MemoryStore())
    await engine.start()
    try:
        clock = engine.clock
        older, newer = clock.stamp(), clock.stamp()
        await engine.commit([Change(USER, {"n": b"2"}, stamp=newer)])
        await engine.commit([Change(USER, {"n": b"1"}, stamp=older)])  # lost the race
        deleted = await engine.store.delete_user(UserRef("bot-1", "test", "user-1"), clock.stamp())
        late = Change(USER, {"n": b"3"}, stamp=clock.stamp(), base=deleted - 1)
        await engine.commit([late])  # its turn began before the deletion
    finally:
        await engine.stop()
    assert engine.metrics is not None
    assert engine.metrics.changes == {"applied": 1, "stale": 1, "dropped": 1, "too_large": 0}


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


async def test_a_store_that_is_down_is_counted(client_for: StartFn, own_redis: RedisServer) -> None:
    url = f"redis://127.0.0.1:{own_redis.port}?prefix=t{uuid.uuid4().hex}&timeout=0.5"
    client = await client_for(counting_bot(url))
    status, _ = await post(client, activity())
    assert status == 200
    own_redis.stop()
    status, _ = await post(client, activity())
    assert status == 503
    samples = await scrape(client)
    load = (("backend", "redis"), ("operation", "load"))
    assert samples[("inline_state_store_unavailable_total", load)] == 1
    assert samples[("inline_state_store_seconds_count", load)] == 1, "failures are not timed"
    assert samples[("inline_state_turns_total", ())] == 2


async def test_with_metrics_off_nothing_is_counted_or_exported(client_for: StartFn) -> None:
    assert Engine(MemoryStore(), metrics=False).metrics is None
    app = counting_bot(MemoryStore(), path="/m")
    app[inline_state.ENGINE_KEY].metrics = None  # as Engine(metrics=False) leaves it
    client = await client_for(app)
    status, _ = await post(client, activity())
    assert status == 200
    response = await client.get("/m")
    assert response.status == 200
    assert "inline_state_" not in await response.text()


def test_the_readme_names_every_metric_exported() -> None:
    section = (REPO / "README.md").read_text().split("## Metrics", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`(inline_state_[a-z_]+)`", section))
    import inline_state._prometheus as exporter

    source = Path(exporter.__file__).read_text()
    exported = set(re.findall(r'"(inline_state_[a-z_]+)"', source))
    suffixed = {f"{name}_total" if name not in _HISTOGRAMS else name for name in exported}
    assert documented == suffixed


_HISTOGRAMS = {"inline_state_store_seconds", "inline_state_change_bytes"}


async def test_one_registry_takes_one_engine_and_a_failing_store_fails_no_scrape(
    client_for: StartFn,
) -> None:
    class Broken(MemoryStore):
        @property
        def cache_stats(self) -> dict[str, int]:
            raise RuntimeError("closed")

    registry = CollectorRegistry()
    app = counting_bot(Broken(), registry=registry)
    with pytest.raises(ValueError, match="Duplicated"):
        inline_state.add_metrics(web.Application(), path="/again", registry=registry)
    client = await client_for(app)
    status, _ = await post(client, activity())
    assert status == 200
    samples = await scrape(client)
    assert samples[("inline_state_turns_total", ())] == 1
    assert not any(name.startswith("inline_state_cache") for name, _ in samples)


async def test_only_applied_changes_are_sized() -> None:
    engine = Engine.create(MemoryStore())
    await engine.start()
    try:
        older, newer = engine.clock.stamp(), engine.clock.stamp()
        await engine.commit([Change(USER, {"n": b"12345"}, stamp=newer)])
        await engine.commit([Change(USER, {"n": b"1234567890"}, stamp=older)])  # stale
    finally:
        await engine.stop()
    assert engine.metrics is not None
    sizes = engine.metrics.change_bytes
    assert (sum(sizes.counts), sizes.total) == (1, 5)
