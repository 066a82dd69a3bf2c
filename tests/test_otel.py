"""OpenTelemetry: the spans and metrics ``aumai_transactions.otel.instrument`` makes,
read back through the SDK's in-memory span exporter and metric reader."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from aumai_transactions import (
    MemoryStore,
    RetryPolicy,
    StepFailedError,
    StepStatus,
    TransactionManager,
    TransactionState,
    sync,
)
from aumai_transactions.otel import instrument

from ._support import Recorder


class Telemetry:
    """An SDK tracer and meter provider reading into memory."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def instrument(self, manager: Any) -> None:
        instrument(
            manager, tracer_provider=self.tracer_provider, meter_provider=self.meter_provider
        )

    @property
    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> ReadableSpan:
        [span] = [s for s in self.spans if s.name == name]
        return span

    def tree(self) -> list[Any]:
        """The finished spans as nested ``(name, [children])``, children in start order."""
        spans = sorted(self.spans, key=lambda s: s.start_time or 0)
        ids = {s.context.span_id for s in spans}

        def children(parent: int | None) -> list[Any]:
            return [
                (s.name, children(s.context.span_id))
                for s in spans
                if (s.parent.span_id if s.parent else None) == parent
                or (parent is None and s.parent is not None and s.parent.span_id not in ids)
            ]

        return children(None)

    def points(self, metric: str) -> dict[tuple[tuple[str, Any], ...], Any]:
        """Each data point of ``metric``: its attributes (sorted) to its value (a sum, or
        a histogram's count)."""
        data = self.reader.get_metrics_data()
        found: dict[tuple[tuple[str, Any], ...], Any] = {}
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for m in scope.metrics:
                    if m.name != metric:
                        continue
                    for point in m.data.data_points:
                        key = tuple(sorted(point.attributes.items()))
                        found[key] = getattr(point, "value", None)
                        if found[key] is None:
                            found[key] = point.count
        return found


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    found = Telemetry()
    yield found
    found.tracer_provider.shutdown()
    found.meter_provider.shutdown()


def handlers(*actions: str, fail: tuple[str, ...] = ()) -> dict[str, Any]:
    return Recorder(fail=fail).handlers(*actions)


async def test_a_commit_is_one_span_with_a_tool_span_per_step(telemetry: Telemetry) -> None:
    manager = TransactionManager(handlers("reserve", "charge"), sync_handlers="inline")
    telemetry.instrument(manager)
    tx = manager.begin()
    reserve = manager.add_step(tx, "booking_agent", "reserve", {"seat": "12A"}, "release")
    manager.add_step(tx, "billing_agent", "charge")
    await manager.commit(tx)
    assert telemetry.tree() == [
        ("transaction commit", [("execute_tool reserve", []), ("execute_tool charge", [])])
    ]
    run = telemetry.named("transaction commit")
    assert run.status.status_code is StatusCode.UNSET
    assert run.attributes is not None
    assert dict(run.attributes) == {
        "aumai.transaction.id": tx.transaction_id,
        "aumai.run": "commit",
        "aumai.transaction.steps": 2,
        "aumai.transaction.timeout": 60.0,
        "aumai.outcome": "committed",
    }
    step = telemetry.named("execute_tool reserve")
    assert step.attributes is not None
    assert dict(step.attributes) == {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": "reserve",
        "gen_ai.tool.call.id": reserve.idempotency_key(tx.transaction_id),
        "aumai.transaction.id": tx.transaction_id,
        "aumai.step.id": reserve.step_id,
        "aumai.agent.id": "booking_agent",
        "aumai.attempt": 1,
        "aumai.phase": "forward",
        "aumai.outcome": "completed",
    }
    assert "12A" not in repr([dict(s.attributes or {}) for s in telemetry.spans])


async def test_a_rollback_links_each_compensation_to_the_step_it_undoes(
    telemetry: Telemetry,
) -> None:
    manager = TransactionManager(
        handlers("reserve", "charge", "release", fail=("charge",)), sync_handlers="inline"
    )
    telemetry.instrument(manager)
    tx = manager.begin()
    manager.add_step(tx, "agent", "reserve", {}, "release")
    manager.add_step(tx, "agent", "charge")
    result = await manager.commit(tx)
    assert result.state is TransactionState.ROLLED_BACK
    assert telemetry.tree() == [
        (
            "transaction commit",
            [
                ("execute_tool reserve", []),
                ("execute_tool charge", []),
                ("compensate release", []),
            ],
        )
    ]
    charge = telemetry.named("execute_tool charge")
    assert charge.status.status_code is StatusCode.ERROR
    assert charge.status.description == "charge failed"
    assert charge.attributes is not None
    assert charge.attributes["error.type"] == "RuntimeError"
    assert charge.attributes["aumai.outcome"] == "failed"
    release = telemetry.named("compensate release")
    reserve = telemetry.named("execute_tool reserve")
    [link] = release.links
    assert link.context.span_id == reserve.context.span_id
    assert link.attributes is not None and link.attributes["aumai.link"] == "compensates"
    assert release.attributes is not None
    assert release.attributes["aumai.phase"] == "compensate"
    assert release.attributes["aumai.compensates"] == "reserve"
    assert release.attributes["gen_ai.tool.name"] == "release"
    assert release.attributes["aumai.outcome"] == "compensated"
    run = telemetry.named("transaction commit")
    assert run.status.status_code is StatusCode.ERROR
    assert run.attributes is not None and run.attributes["error.type"] == "rolled_back"
    assert [e.name for e in run.events] == ["compensating"]


async def test_a_rollback_run_that_undoes_everything_is_not_an_error(
    telemetry: Telemetry,
) -> None:
    manager = TransactionManager(handlers("a", "undo_a"))
    telemetry.instrument(manager)
    tx = manager.begin()
    manager.add_step(tx, "agent", "a", {}, "undo_a")
    await manager.rollback(tx)
    assert telemetry.tree() == [("transaction rollback", [("compensate undo_a", [])])]
    assert telemetry.named("transaction rollback").status.status_code is StatusCode.UNSET
    assert telemetry.named("compensate undo_a").links == ()  # the step never ran here


async def test_a_timed_out_transaction_interrupts_its_step(telemetry: Telemetry) -> None:
    async def slow(action: str, data: dict[str, Any]) -> None:
        await anyio.sleep(10)

    async def undo(action: str, data: dict[str, Any]) -> None:
        return None

    manager = TransactionManager({"slow": slow, "undo": undo})
    telemetry.instrument(manager)
    tx = manager.begin(timeout_seconds=0.05)
    manager.add_step(tx, "agent", "slow", {}, "undo")
    result = await manager.commit(tx)
    assert result.state is TransactionState.FAILED
    assert telemetry.tree() == [
        ("transaction commit", [("execute_tool slow", []), ("compensate undo", [])])
    ]
    step = telemetry.named("execute_tool slow")
    assert step.attributes is not None
    assert (step.attributes["aumai.outcome"], step.attributes["error.type"]) == (
        "interrupted",
        "interrupted",
    )
    run = telemetry.named("transaction commit")
    assert run.attributes is not None and run.attributes["error.type"] == "failed"
    assert "timed out" in (run.status.description or "")
    [link] = telemetry.named("compensate undo").links
    assert link.context.span_id == step.context.span_id


async def test_a_parallel_group_with_one_failure(telemetry: Telemetry) -> None:
    started = anyio.Event()

    async def slow(action: str, data: dict[str, Any]) -> None:
        started.set()
        await anyio.sleep(10)

    async def boom(action: str, data: dict[str, Any]) -> None:
        await started.wait()
        raise ValueError("no rooms")

    async def ok(action: str, data: dict[str, Any]) -> None:
        return None

    manager = TransactionManager({"flight": slow, "hotel": boom, "first": ok, "undo": ok})
    telemetry.instrument(manager)
    tx = manager.begin()
    manager.add_step(tx, "agent", "first", {}, "undo")
    manager.add_step(tx, "agent", "flight", {}, "undo", group="trip")
    manager.add_step(tx, "agent", "hotel", {}, "undo", group="trip")
    result = await manager.commit(tx)
    assert result.state is TransactionState.ROLLED_BACK
    [(root, children)] = telemetry.tree()
    assert root == "transaction commit"
    names = [name for name, _ in children]
    assert names == ["execute_tool first", "parallel trip", "compensate undo", "compensate undo"]
    group = children[1][1]
    assert sorted(name for name, _ in group) == ["execute_tool flight", "execute_tool hotel"]
    trip = telemetry.named("parallel trip")
    assert trip.status.status_code is StatusCode.ERROR
    assert trip.attributes is not None
    assert trip.attributes["error.type"] == "ValueError"
    assert trip.attributes["aumai.failed_step"] == tx.steps[2].step_id
    assert trip.attributes["aumai.group.steps"] == 2
    flight = telemetry.named("execute_tool flight")
    assert flight.attributes is not None and flight.attributes["aumai.outcome"] == "interrupted"
    assert flight.attributes["aumai.group"] == "trip"
    # The sibling left in doubt is compensated, linked to its attempt; the failed one is not.
    links = {
        link.context.span_id
        for span in telemetry.spans
        if span.name == "compensate undo"
        for link in span.links
    }
    hotel = telemetry.named("execute_tool hotel")
    first = telemetry.named("execute_tool first")
    assert links == {flight.context.span_id, first.context.span_id}
    assert hotel.context.span_id not in links


async def test_an_open_transaction_nests_under_the_callers_span(telemetry: Telemetry) -> None:
    manager = TransactionManager(handlers("search", "book", "cancel"))
    telemetry.instrument(manager)
    tracer = telemetry.tracer_provider.get_tracer("agent")
    with tracer.start_as_current_span("invoke_agent travel"):
        async with manager.transaction() as tx:
            found = await tx.run("agent", "search", {"q": "Lisbon"})
            assert found == {"done": "search"}
            async with tx.parallel("bookings") as group:
                group.run("agent", "book", {}, "cancel")
                group.run("agent", "book", {}, "cancel")
    assert telemetry.tree() == [
        (
            "invoke_agent travel",
            [
                (
                    "transaction open",
                    [
                        ("execute_tool search", []),
                        (
                            "parallel bookings",
                            [("execute_tool book", []), ("execute_tool book", [])],
                        ),
                    ],
                )
            ],
        )
    ]
    run = telemetry.named("transaction open")
    assert run.attributes is not None and run.attributes["aumai.outcome"] == "committed"
    assert run.context.trace_id == telemetry.named("invoke_agent travel").context.trace_id


async def test_an_open_transaction_whose_step_fails_and_a_retry(telemetry: Telemetry) -> None:
    calls = 0

    def flaky(action: str, data: dict[str, Any]) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("reset")
        return "ok"

    manager = TransactionManager(
        {"flaky": flaky, **handlers("pay", "refund", fail=("pay",))}, sync_handlers="inline"
    )
    telemetry.instrument(manager)
    with pytest.raises(StepFailedError):
        async with manager.transaction() as tx:
            await tx.run(
                "agent",
                "flaky",
                {},
                "refund",
                retry=RetryPolicy(max_attempts=2, initial_delay=0, jitter=0),
            )
            await tx.run("agent", "pay")
    assert telemetry.tree() == [
        (
            "transaction open",
            [
                ("execute_tool flaky", []),
                ("execute_tool flaky", []),
                ("execute_tool pay", []),
                ("compensate refund", []),
            ],
        )
    ]
    first, second = [s for s in telemetry.spans if s.name == "execute_tool flaky"]
    assert first.attributes is not None and second.attributes is not None
    assert (first.attributes["aumai.attempt"], first.attributes["aumai.outcome"]) == (1, "retrying")
    assert first.attributes["error.type"] == "ConnectionError"
    assert (second.attributes["aumai.attempt"], second.attributes["aumai.outcome"]) == (
        2,
        "completed",
    )
    assert first.attributes["gen_ai.tool.call.id"] == second.attributes["gen_ai.tool.call.id"]
    [link] = telemetry.named("compensate refund").links
    assert link.context.span_id == second.context.span_id  # the attempt that took effect
    assert telemetry.points("aumai.retries") == {
        (("aumai.phase", "forward"), ("gen_ai.tool.name", "flaky")): 1
    }


async def test_a_recovery_is_its_own_run(telemetry: Telemetry) -> None:
    # As a driver that died left it: "a" completed, "b" running (in doubt).
    builder = TransactionManager()
    tx = builder.begin()
    for name in "ab":
        builder.add_step(tx, "agent", name, {}, f"undo_{name}")
    tx.steps[0].status = StepStatus.COMPLETED
    tx.steps[1].status = StepStatus.RUNNING
    tx.steps[0].attempts = tx.steps[1].attempts = 1
    tx.state = TransactionState.ACTIVE
    store = MemoryStore()
    await store.save(tx)
    manager = TransactionManager(handlers("a", "b", "undo_a", "undo_b"), store=store)
    telemetry.instrument(manager)
    [result] = await manager.recover()
    assert result.state is TransactionState.ROLLED_BACK
    assert telemetry.tree() == [
        ("transaction recovery", [("compensate undo_b", []), ("compensate undo_a", [])])
    ]
    recovery = telemetry.named("transaction recovery")
    assert recovery.attributes is not None
    assert recovery.attributes["aumai.recovery.attempt"] == 1
    assert recovery.attributes["aumai.outcome"] == "rolled_back"
    assert recovery.status.status_code is StatusCode.UNSET  # recovery did its job
    assert recovery.links == ()  # the crashed run was traced elsewhere, if at all
    assert telemetry.points("aumai.recoveries") == {(("aumai.outcome", "rolled_back"),): 1}


async def test_a_recovery_links_to_the_run_it_takes_over(telemetry: Telemetry) -> None:
    # The first run stops when its lease is taken away mid-step (as when a worker
    # stalls past its lease); the same process recovers the transaction later.
    store = MemoryStore()

    async def stalls(action: str, data: dict[str, Any]) -> None:
        store._leases[tx.transaction_id].epoch += 1
        store._leases[tx.transaction_id].owner = None

    manager = TransactionManager({**handlers("a", "undo_a"), "b": stalls}, store=store)
    telemetry.instrument(manager)
    tx = manager.begin()
    manager.add_step(tx, "agent", "a", {}, "undo_a")
    manager.add_step(tx, "agent", "b")
    with pytest.raises(Exception, match="stale"):
        await manager.commit(tx)
    first = telemetry.named("transaction commit")
    assert first.status.status_code is StatusCode.ERROR
    assert first.attributes is not None
    assert first.attributes["error.type"] == "LeaseLostError"
    assert first.attributes["aumai.outcome"] == "stopped"
    assert telemetry.named("execute_tool b").attributes["aumai.outcome"] == "unfinished"  # type: ignore[index]
    [result] = await manager.recover()
    assert result.state is TransactionState.ROLLED_BACK
    recovery = telemetry.named("transaction recovery")
    [link] = recovery.links
    assert link.context.span_id == first.context.span_id
    assert link.attributes is not None and link.attributes["aumai.link"] == "previous_run"
    assert telemetry.points("aumai.transactions.in_flight") == {
        (("aumai.run", "commit"),): 0,
        (("aumai.run", "recovery"),): 0,
    }


async def test_metric_values_after_a_known_workload(telemetry: Telemetry) -> None:
    manager = TransactionManager(
        handlers("a", "b", "undo_a", "bad", "undo_bad_fails", fail=("bad", "undo_bad_fails")),
        sync_handlers="inline",
        compensation_retry=RetryPolicy(max_attempts=2, initial_delay=0, jitter=0),
    )
    telemetry.instrument(manager)
    for _ in range(3):  # committed
        tx = manager.begin()
        manager.add_step(tx, "agent", "a", {}, "undo_a")
        await manager.commit(tx)
    tx = manager.begin()  # rolled back
    manager.add_step(tx, "agent", "a", {}, "undo_a")
    manager.add_step(tx, "agent", "bad")
    await manager.commit(tx)
    tx = manager.begin()  # compensation failed: undo fails twice
    manager.add_step(tx, "agent", "b", {}, "undo_bad_fails")
    manager.add_step(tx, "agent", "bad")
    await manager.commit(tx)
    assert telemetry.points("aumai.transactions") == {
        (("aumai.outcome", "committed"), ("aumai.run", "commit")): 3,
        (("aumai.outcome", "rolled_back"), ("aumai.run", "commit")): 1,
        (("aumai.outcome", "compensation_failed"), ("aumai.run", "commit")): 1,
    }
    assert telemetry.points("aumai.transactions.in_flight") == {(("aumai.run", "commit"),): 0}
    assert telemetry.points("aumai.step.duration") == {  # histogram counts
        (("aumai.outcome", "completed"), ("gen_ai.tool.name", "a")): 4,
        (("aumai.outcome", "completed"), ("gen_ai.tool.name", "b")): 1,
        (("aumai.outcome", "failed"), ("gen_ai.tool.name", "bad")): 2,
    }
    assert telemetry.points("aumai.compensation.duration") == {
        (("aumai.outcome", "compensated"), ("gen_ai.tool.name", "undo_a")): 1,
        (("aumai.outcome", "compensation_failed"), ("gen_ai.tool.name", "undo_bad_fails")): 1,
    }
    assert telemetry.points("aumai.compensations.failed") == {
        (("gen_ai.tool.name", "undo_bad_fails"),): 1
    }
    assert telemetry.points("aumai.retries") == {
        (("aumai.phase", "compensate"), ("gen_ai.tool.name", "undo_bad_fails")): 1
    }
    undo = [s for s in telemetry.spans if s.name == "compensate undo_bad_fails"]
    assert len(undo) == 1 and [e.name for e in undo[0].events] == ["retry"]


async def test_dead_letters_are_counted(telemetry: Telemetry) -> None:
    builder = TransactionManager()
    tx = builder.begin()
    builder.add_step(tx, "agent", "a", {}, "undo_a")
    tx.state = TransactionState.ACTIVE
    tx.recovery_attempts = 3  # the claim makes it 4, past max_recovery_attempts
    store = MemoryStore()
    await store.save(tx)
    manager = TransactionManager(handlers("a", "undo_a"), store=store)
    telemetry.instrument(manager)
    [result] = await manager.recover()
    assert result.state is TransactionState.DEAD_LETTER
    assert telemetry.points("aumai.dead_letters") == {(): 1}
    assert telemetry.points("aumai.recoveries") == {(("aumai.outcome", "dead_letter"),): 1}
    run = telemetry.named("transaction recovery")
    assert run.attributes is not None and run.attributes["error.type"] == "dead_letter"


def test_the_blocking_facade_is_instrumented_the_same_way(telemetry: Telemetry) -> None:
    manager = sync.TransactionManager(handlers("a"))
    telemetry.instrument(manager)
    tx = manager.begin()
    manager.add_step(tx, "agent", "a")
    manager.commit(tx)
    assert telemetry.tree() == [("transaction commit", [("execute_tool a", [])])]


def test_uninstrument_stops_the_spans(telemetry: Telemetry) -> None:
    manager = sync.TransactionManager()
    instrumentation = instrument(manager, tracer_provider=telemetry.tracer_provider)
    manager.commit(manager.begin())
    instrumentation.uninstrument()
    manager.commit(manager.begin())
    assert len(telemetry.spans) == 1


def test_instrument_needs_a_manager() -> None:
    with pytest.raises(TypeError, match="instrument needs a TransactionManager"):
        instrument(object())


def test_the_library_never_imports_opentelemetry() -> None:
    code = (
        "import sys, asyncio\n"
        "import aumai_transactions, aumai_transactions.sync, aumai_transactions.cli\n"
        "from aumai_transactions import TransactionManager, events\n"
        "m = TransactionManager(listeners=[print])\n"
        "asyncio.run(m.commit(m.begin()))\n"
        "print(sorted(n for n in sys.modules if n.startswith('opentelemetry')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.splitlines()[-1] == "[]"


async def test_without_a_tracing_sdk_metrics_still_count(telemetry: Telemetry) -> None:
    from opentelemetry.trace import NoOpTracerProvider

    manager = TransactionManager(handlers("a", "b", "undo_a", fail=("b",)), sync_handlers="inline")
    instrumentation = instrument(
        manager, tracer_provider=NoOpTracerProvider(), meter_provider=telemetry.meter_provider
    )
    tx = manager.begin()
    manager.add_step(tx, "agent", "a", {}, "undo_a")
    manager.add_step(tx, "agent", "b")
    await manager.commit(tx)
    assert telemetry.spans == [] and instrumentation._runs == {}
    assert telemetry.points("aumai.transactions") == {
        (("aumai.outcome", "rolled_back"), ("aumai.run", "commit")): 1
    }
    assert telemetry.points("aumai.step.duration") == {
        (("aumai.outcome", "completed"), ("gen_ai.tool.name", "a")): 1,
        (("aumai.outcome", "failed"), ("gen_ai.tool.name", "b")): 1,
    }
    assert telemetry.points("aumai.compensation.duration") == {
        (("aumai.outcome", "compensated"), ("gen_ai.tool.name", "undo_a")): 1
    }
