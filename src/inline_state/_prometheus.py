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
    """Serve the metrics of the engine ``setup()`` put on ``app`` (give it that app, not
    a sub-app; the engine is looked up when scraped) at ``path``, in Prometheus's text
    format. Returns the ``prometheus_client.CollectorRegistry`` they are in: a new one,
    or ``registry`` (pass ``prometheus_client.REGISTRY`` to export them beside your own;
    one engine's per registry: a second raises ValueError). REST API calls go to the
    store directly and are not counted.

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

    def describe(self) -> Iterator[Any]:
        """The families, without samples: a second collector of the same names on one
        registry is refused ("Duplicated timeseries") instead of doubling every series."""
        return self._families(None)

    def collect(self) -> Iterator[Any]:
        engine: Engine | None = self.app.get(ENGINE_KEY)
        if engine is not None and engine.metrics is not None:
            yield from self._families(engine)

    def _families(self, engine: Engine | None) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        metrics = engine.metrics if engine is not None else None
        store = engine.store if engine is not None else None
        backend = _BACKENDS.get(type(store).__name__, type(store).__name__)
        turns = CounterMetricFamily(
            "inline_state_turns", "Incoming messages the middleware opened a turn for."
        )
        if metrics is not None:
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
        if metrics is not None:
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
        sizes = HistogramMetricFamily(
            "inline_state_change_bytes",
            "Bytes of the property values (JSON) each applied change sets.",
        )
        if metrics is not None:
            for result in RESULTS:
                changes.add_metric([result], metrics.changes[result])
            sizes.add_metric([], metrics.change_bytes.cumulative(), metrics.change_bytes.total)
        yield changes
        yield sizes
        lookups = CounterMetricFamily(
            "inline_state_cache_lookups",
            "The store's cache: on memory:// records found decoded (hit) or decoded; on"
            " sqlite:// loads answered from decoded records (hit) or from the file.",
            labels=["backend", "result"],
        )
        if store is not None:
            hits_decodes = _cache_counts(store)
            if hits_decodes is None:
                return
            lookups.add_metric([backend, "hit"], hits_decodes[0])
            lookups.add_metric([backend, "decode"], hits_decodes[1])
        yield lookups


def _cache_counts(store: Any) -> tuple[float, float] | None:
    """A store's (hits, decodes), or None when it has no such counters (or they fail:
    a scrape must not)."""
    try:
        stats = store.cache_stats
        return float(stats["hits"]), float(stats["decodes"])
    except Exception:  # any store's property: nothing of it may fail the scrape
        return None
