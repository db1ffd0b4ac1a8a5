"""Prometheus metrics of an app's engine: ``add_metrics(app)`` serves them as text.

prometheus-client is the ``metrics`` extra, imported only here and only when
``add_metrics`` is called. The engine keeps plain counters (``_metrics``); a collector
reads them when scraped, so a turn pays for no lock and no label lookup. The names are
documented in the README's "Metrics" section.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from aiohttp import web

from ._engine import Engine
from ._http import ENGINE_KEY
from ._metrics import OPERATIONS, RESULTS

__all__ = ["add_metrics"]

_BACKENDS = {"MemoryStore": "memory", "SqliteStore": "sqlite", "RedisStore": "redis"}


def add_metrics(app: web.Application, *, path: str = "/metrics", registry: Any = None) -> Any:
    """Serve the metrics of the app's engine (``setup()`` or ``add_state_api`` put it
    there; looked up when scraped) at ``path``, in Prometheus's text format. Returns the
    ``prometheus_client.CollectorRegistry`` they are in: a new one, or ``registry`` (pass
    ``prometheus_client.REGISTRY`` to export them beside your own).

    The numbers count since the engine was made, per process; they name no user, bot or
    conversation. Raises ImportError naming the extra when prometheus-client is missing.
    """
    try:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    except ImportError as exc:  # pragma: no cover - the extra is installed in the tests
        raise ImportError(
            "inline_state metrics need prometheus-client: pip install 'inline_state[metrics]'"
        ) from exc
    if registry is None:
        registry = CollectorRegistry(auto_describe=True)
    registry.register(_Collector(app))
    content_type, _, charset = CONTENT_TYPE_LATEST.partition("; charset=")

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry),
            content_type=content_type,
            charset=charset or "utf-8",
        )

    app.router.add_get(path, metrics)
    return registry


class _Collector:
    """Reads the engine's counters (and the store's cache counters) when scraped."""

    def __init__(self, app: web.Application) -> None:
        self.app = app

    def describe(self) -> list[Any]:
        return []  # names depend on the engine found when scraped: nothing to check early

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        engine: Engine | None = self.app.get(ENGINE_KEY)
        metrics = engine.metrics if engine is not None else None
        if engine is None or metrics is None:
            return
        backend = _BACKENDS.get(type(engine.store).__name__, type(engine.store).__name__)
        turns = CounterMetricFamily(
            "inline_state_turns", "Incoming messages the middleware opened a turn for."
        )
        turns.add_metric([], metrics.turns)
        yield turns
        seconds = HistogramMetricFamily(
            "inline_state_store_seconds",
            "Time of the store calls of turns and POSTed replies.",
            labels=["backend", "operation"],
        )
        unavailable = CounterMetricFamily(
            "inline_state_store_unavailable",
            "Store calls that failed with StoreUnavailable (each a 503 or a logged loss).",
            labels=["backend", "operation"],
        )
        for operation in OPERATIONS:
            histogram = metrics.store_seconds[operation]
            seconds.add_metric([backend, operation], histogram.cumulative(), histogram.total)
            unavailable.add_metric([backend, operation], metrics.unavailable[operation])
        yield seconds
        yield unavailable
        changes = CounterMetricFamily(
            "inline_state_changes",
            "Changes applied, by what became of them: stale (every entry lost to a newer"
            " stamp), dropped (older than the user's deletion), too_large.",
            labels=["result"],
        )
        for result in RESULTS:
            changes.add_metric([result], metrics.changes[result])
        yield changes
        sizes = HistogramMetricFamily(
            "inline_state_change_bytes", "Bytes of JSON each applied change sets."
        )
        sizes.add_metric([], metrics.change_bytes.cumulative(), metrics.change_bytes.total)
        yield sizes
        cache = getattr(engine.store, "cache_stats", None)
        if isinstance(cache, dict):
            lookups = CounterMetricFamily(
                "inline_state_cache_lookups",
                "Records a load found decoded in the store's cache (hit) or had to decode.",
                labels=["backend", "result"],
            )
            lookups.add_metric([backend, "hit"], cache.get("hits", 0))
            lookups.add_metric([backend, "decode"], cache.get("decodes", 0))
            yield lookups
