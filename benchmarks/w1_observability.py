"""W1 with observability: what listening and tracing cost per step.

The W1 workload (2,000 three-step transactions, no-op handlers, in-memory store) run
in interleaved rounds in one process, once per variant:

* ``none``: no listener (what every manager pays: one attribute test per event);
* ``listener``: one sync listener that does nothing;
* ``async-listener``: one ``async def`` listener that does nothing. W1's loop never
  yields (no-op handlers, a store that never suspends), so its queue fills during the
  loop and is drained after it, inside the timed run: the queue is sized for the
  16,000 events of a run (``event_queue_size=20_000``), so that none is dropped;
* ``otel-api``: ``instrument(manager)`` with OpenTelemetry's API and no SDK (no-op
  tracer and meter);
* ``otel-sdk``: ``instrument(manager)`` with the SDK's TracerProvider (a simple span
  processor into an exporter that drops the spans) and MeterProvider (in-memory reader).

Baseline, same run: the plain loop of W1. Medians of the rounds after a warm-up.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from aumai_transactions import Event, TransactionManager

from ._common import REPEATS, emit
from .w1_engine import _async_handlers, _baseline, _engine, _sync_handlers

WORKLOADS = ("W1", "W1-observability")

N = 2000
ROUNDS = REPEATS  # medians of 5 after the warm-up, as every workload
VARIANTS = ("none", "listener", "async-listener", "otel-api", "otel-sdk")


def _nothing(event: Event) -> None:
    return None


async def _nothing_async(event: Event) -> None:
    return None


def _sdk() -> tuple[Any, Any] | None:
    try:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            SimpleSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )
    except ImportError:
        return None

    class Drop(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(Drop()))
    return tracer_provider, MeterProvider(metric_readers=[InMemoryMetricReader()])


def _manager(variant: str, handlers: dict[str, Callable[..., Any]]) -> TransactionManager:
    manager = TransactionManager(handlers, sync_handlers="inline", event_queue_size=20_000)
    if variant == "listener":
        manager.subscribe(_nothing)
    elif variant == "async-listener":
        manager.subscribe(_nothing_async)
    elif variant.startswith("otel"):
        from aumai_transactions.otel import instrument

        if variant == "otel-sdk":
            sdk = _sdk()
            assert sdk is not None
            instrument(manager, tracer_provider=sdk[0], meter_provider=sdk[1])
        else:
            from opentelemetry import metrics, trace

            instrument(
                manager,
                tracer_provider=trace.NoOpTracerProvider(),
                meter_provider=metrics.NoOpMeterProvider(),
            )
    return manager


async def _timed(run: Callable[[], Any]) -> float:
    gc.collect()
    start = time.perf_counter()
    await run()
    return time.perf_counter() - start


async def _rounds(is_async: bool, variants: Sequence[str]) -> tuple[dict[str, float], int]:
    handlers = _async_handlers(False) if is_async else _sync_handlers(False)
    managers = {v: _manager(v, handlers) for v in variants}

    async def engine(variant: str) -> None:
        manager = managers[variant]
        await _engine(N, manager)
        await manager.drain_events()
        manager._transactions.clear()  # each round starts from an empty registry

    times: dict[str, list[float]] = {v: [] for v in ("baseline", *variants)}
    for round_ in range(ROUNDS + 1):  # the first is the warm-up
        measured = {"baseline": await _timed(lambda: _baseline(N, handlers, is_async))}
        for variant in variants:
            measured[variant] = await _timed(lambda v=variant: engine(v))  # type: ignore[misc]
        if round_:
            for name, seconds in measured.items():
                times[name].append(seconds)
    dropped = sum(m.events_dropped for m in managers.values())
    return {name: statistics.median(values) for name, values in times.items()}, dropped


def main() -> None:
    variants = [v for v in VARIANTS if not v.startswith("otel") or _sdk() is not None]
    for is_async in (False, True):
        kind = "async" if is_async else "sync-inline"
        medians, dropped = asyncio.run(_rounds(is_async, variants))
        base_step = medians["baseline"] / (3 * N) * 1e6
        none_step = medians["none"] / (3 * N) * 1e6
        for variant in variants:
            per_step = medians[variant] / (3 * N) * 1e6
            emit(
                "W1-observability",
                "memory",
                per_step,
                "us/step",
                N,
                f"{kind} handlers, {variant}; baseline plain loop {base_step:.3f} us/step; "
                f"ratio {per_step / base_step:.1f}x; vs no listener {per_step / none_step:.2f}x",
                handlers=kind,
                variant=variant,
                baseline=round(base_step, 3),
                ratio=round(per_step / base_step, 2),
                vs_none=round(per_step / none_step, 3),
                events_dropped=dropped if variant == "async-listener" else 0,
            )


if __name__ == "__main__":
    main()
