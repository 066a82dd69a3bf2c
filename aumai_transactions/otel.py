"""OpenTelemetry traces and metrics of a manager's transactions (extra ``otel``).

``instrument(manager)`` subscribes one listener to the manager's events (see
``aumai_transactions.events``) that turns them into spans and metrics through
``opentelemetry-api`` alone: with no SDK configured, they are the API's no-op ones.
Nothing else in the library imports this module or OpenTelemetry.

Spans (``SpanKind.INTERNAL``; names follow the GenAI conventions where they fit):

* ``transaction {run}`` per run of a driver (``commit``, ``rollback``, ``open``,
  ``recovery``, ``retry_compensations``), a child of the caller's current span (an
  agent's run); a recovery (or an operator's retry) links to the span of the run it
  takes over when this process traced it;
* ``execute_tool {action}`` per attempt of a step, under its run's span (or its
  group's), with ``gen_ai.tool.name`` and ``gen_ai.tool.call.id`` (the idempotency
  key, the same for every attempt and every recovery);
* ``parallel {group}`` per parallel group;
* ``compensate {compensating_action}`` per compensation (all its attempts), linked to
  the span of the step attempt it undoes.

Spans are started with explicit parents and never made the current span: a run can
end in another task than the one it began in (compensation runs shielded in a task of
its own), and a span left current there would become the parent of the caller's next
spans. So a handler's own spans nest under the caller's span, next to the
transaction's. A span that failed has status ERROR and ``error.type``. See
``docs/observability.md`` for every attribute and metric.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import metrics, trace
    from opentelemetry.trace import Link, Span, SpanContext, Status, StatusCode
except ImportError as exc:  # pragma: no cover - exercised without the extra only
    raise ImportError(
        "aumai_transactions.otel needs OpenTelemetry's API: pip install 'aumai-transactions[otel]'"
    ) from exc

from . import events as ev
from ._version import __version__
from .models import TransactionState

__all__ = ["Instrumentation", "instrument"]

logger = logging.getLogger("aumai_transactions.otel")

INSTRUMENTATION_NAME = "aumai_transactions"
PREVIOUS_RUNS_KEPT = 10_000  # span contexts of ended runs, for the links of recoveries

# The end states in which a run did what it was asked (its span's status stays unset).
_RUN_SUCCEEDS: dict[str, frozenset[TransactionState]] = {
    "commit": frozenset({TransactionState.COMMITTED}),
    "open": frozenset({TransactionState.COMMITTED}),
    "rollback": frozenset({TransactionState.ROLLED_BACK}),
    "recovery": frozenset(
        {TransactionState.COMMITTED, TransactionState.ROLLED_BACK, TransactionState.FAILED}
    ),
    "retry_compensations": frozenset({TransactionState.ROLLED_BACK, TransactionState.COMMITTED}),
}


@dataclass(slots=True)
class _Open:
    """A span this listener started, and the context its children are started in."""

    span: Span
    context: otel_context.Context
    started: datetime

    def end(self) -> None:
        self.span.end()


@dataclass(slots=True)
class _Run:
    """What is open of one transaction's run."""

    run: _Open
    recording: bool
    """False when the tracer records nothing (no SDK): then no child span is made."""
    attempts: dict[str, _Open] = field(default_factory=dict)
    compensations: dict[str, _Open] = field(default_factory=dict)
    groups: dict[str, _Open] = field(default_factory=dict)
    forward: dict[str, SpanContext] = field(default_factory=dict)


def _failed(span: Span, error_type: str, description: str | None) -> None:
    span.set_attribute("error.type", error_type)
    span.set_status(Status(StatusCode.ERROR, description))


def _seconds(start: datetime, end: datetime) -> float:
    return max(0.0, (end - start).total_seconds())


class Instrumentation:
    """The listener ``instrument`` subscribed; ``uninstrument()`` removes it."""

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self._tracer = trace.get_tracer(
            INSTRUMENTATION_NAME, __version__, tracer_provider=tracer_provider
        )
        meter = metrics.get_meter(INSTRUMENTATION_NAME, __version__, meter_provider=meter_provider)
        self._transactions = meter.create_counter(
            "aumai.transactions", "{transaction}", "Runs that ended, by run and outcome"
        )
        self._in_flight = meter.create_up_down_counter(
            "aumai.transactions.in_flight", "{transaction}", "Runs being driven now, by run"
        )
        self._step_duration = meter.create_histogram(
            "aumai.step.duration", "s", "Duration of each step attempt, by action and outcome"
        )
        self._compensation_duration = meter.create_histogram(
            "aumai.compensation.duration",
            "s",
            "Duration of each compensation, by action and outcome",
        )
        self._retries = meter.create_counter(
            "aumai.retries", "{retry}", "Attempts retried, by action and phase"
        )
        self._compensations_failed = meter.create_counter(
            "aumai.compensations.failed", "{compensation}", "Compensations that failed for good"
        )
        self._recoveries = meter.create_counter(
            "aumai.recoveries", "{transaction}", "Recovery runs, by outcome"
        )
        self._dead_letters = meter.create_counter(
            "aumai.dead_letters", "{transaction}", "Transactions recovery gave up on"
        )
        self._runs: dict[str, _Run] = {}
        self._previous: OrderedDict[str, SpanContext] = OrderedDict()
        self._unsubscribe: Callable[[], None] | None = None
        self._dispatch: dict[type[ev.Event], Callable[[Any], None]] = {
            ev.TransactionBegan: self._began,
            ev.TransactionCompensating: self._compensating,
            ev.TransactionCommitted: self._ended,
            ev.TransactionRolledBack: self._ended,
            ev.TransactionFailed: self._ended,
            ev.TransactionCompensationFailed: self._ended,
            ev.TransactionDeadLettered: self._ended,
            ev.TransactionRecovered: self._recovered,
            ev.TransactionBlocked: self._blocked,
            ev.RunStopped: self._stopped,
            ev.LeaseLost: self._stopped,
            ev.GroupStarted: self._group_started,
            ev.GroupEnded: self._group_ended,
            ev.StepStarted: self._step_started,
            ev.StepCompleted: self._step_ended,
            ev.StepFailed: self._step_ended,
            ev.StepRetrying: self._step_ended,
            ev.StepInterrupted: self._step_ended,
            ev.CompensationStarted: self._compensation_started,
            ev.CompensationCompleted: self._compensation_ended,
            ev.CompensationFailed: self._compensation_ended,
        }

    def __call__(self, event: ev.Event) -> None:
        handle = self._dispatch.get(type(event))
        if handle is not None:
            handle(event)

    def uninstrument(self) -> None:
        """Stop tracing the manager (the runs under way end their spans unfinished)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    # ------------------------------------------------------------------ helpers

    def _start(
        self,
        name: str,
        parent: otel_context.Context,
        attributes: dict[str, Any],
        at: datetime,
        links: list[Link] | None = None,
    ) -> _Open:
        span = self._tracer.start_span(name, parent, attributes=attributes, links=links)
        return _Open(span, trace.set_span_in_context(span, parent), at)

    def _parent(self, run: _Run, group: str | None) -> otel_context.Context:
        opened = run.groups.get(group) if group is not None else None
        return (opened or run.run).context

    def _close_run(self, tid: str, run: _Run) -> None:
        """End what is still open of ``run`` (newest first), then its own span."""
        for opened in [*run.compensations.values(), *run.attempts.values()]:
            opened.span.set_attribute("aumai.outcome", "unfinished")
            opened.end()
        for opened in run.groups.values():
            opened.end()
        run.run.end()
        self._runs.pop(tid, None)
        self._previous[tid] = run.run.span.get_span_context()
        self._previous.move_to_end(tid)
        while len(self._previous) > PREVIOUS_RUNS_KEPT:
            self._previous.popitem(last=False)

    @staticmethod
    def _step_attributes(event: ev.StepEvent) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": event.action,
            "gen_ai.tool.call.id": event.idempotency_key,
            "aumai.transaction.id": event.transaction_id,
            "aumai.step.id": event.step_id,
            "aumai.agent.id": event.agent_id,
            "aumai.attempt": event.attempt,
            "aumai.phase": "forward",
        }
        if event.group is not None:
            attributes["aumai.group"] = event.group
        return attributes

    # ------------------------------------------------------------------ transactions

    def _began(self, event: ev.TransactionBegan) -> None:
        tid = event.transaction_id
        stale = self._runs.get(tid)
        if stale is not None:
            self._close_run(tid, stale)
        attributes: dict[str, Any] = {
            "aumai.transaction.id": tid,
            "aumai.run": event.run,
            "aumai.transaction.steps": event.steps,
        }
        if event.timeout_seconds is not None:
            attributes["aumai.transaction.timeout"] = event.timeout_seconds
        if event.run == "recovery":
            attributes["aumai.recovery.attempt"] = event.recovery_attempt
        previous = self._previous.get(tid)
        links = None if previous is None else [Link(previous, {"aumai.link": "previous_run"})]
        opened = self._start(
            f"transaction {event.run}", otel_context.get_current(), attributes, event.at, links
        )
        self._runs[tid] = _Run(opened, opened.span.is_recording())
        self._in_flight.add(1, {"aumai.run": event.run})

    def _compensating(self, event: ev.TransactionCompensating) -> None:
        run = self._runs.get(event.transaction_id)
        if run is not None:
            run.run.span.add_event("compensating", {"aumai.error": event.error or ""})

    def _ended(self, event: ev.TransactionEnded) -> None:
        run = self._runs.get(event.transaction_id)
        outcome = event.state.value
        if run is not None:
            span = run.run.span
            span.set_attribute("aumai.outcome", outcome)
            if event.compensation_errors:
                span.set_attribute("aumai.compensation_errors", event.compensation_errors)
            if event.state not in _RUN_SUCCEEDS[event.run]:
                _failed(span, outcome, event.error)
            self._close_run(event.transaction_id, run)
        self._transactions.add(1, {"aumai.run": event.run, "aumai.outcome": outcome})
        self._in_flight.add(-1, {"aumai.run": event.run})
        if event.state is TransactionState.DEAD_LETTER:
            self._dead_letters.add(1)

    def _recovered(self, event: ev.TransactionRecovered) -> None:
        self._recoveries.add(1, {"aumai.outcome": event.state.value})

    def _blocked(self, event: ev.TransactionBlocked) -> None:
        run = self._runs.get(event.transaction_id)
        if run is not None:
            span = run.run.span
            span.set_attribute("aumai.outcome", "blocked")
            span.set_attribute("aumai.missing_actions", list(event.missing_actions))
            _failed(span, "blocked", event.reason)
            self._close_run(event.transaction_id, run)
        self._in_flight.add(-1, {"aumai.run": event.run})
        self._recoveries.add(1, {"aumai.outcome": "blocked"})

    def _stopped(self, event: ev.RunStopped) -> None:
        run = self._runs.get(event.transaction_id)
        if run is not None:
            span = run.run.span
            span.set_attribute("aumai.outcome", "stopped")
            _failed(span, event.error_type, event.error)
            self._close_run(event.transaction_id, run)
        self._in_flight.add(-1, {"aumai.run": event.run})

    # ------------------------------------------------------------------ groups

    def _group_started(self, event: ev.GroupStarted) -> None:
        run = self._runs.get(event.transaction_id)
        if run is None or not run.recording:
            return
        attributes = {
            "aumai.transaction.id": event.transaction_id,
            "aumai.group": event.group,
            "aumai.group.steps": len(event.step_ids),
        }
        run.groups[event.group] = self._start(
            f"parallel {event.group}", run.run.context, attributes, event.at
        )

    def _group_ended(self, event: ev.GroupEnded) -> None:
        run = self._runs.get(event.transaction_id)
        opened = None if run is None else run.groups.pop(event.group, None)
        if opened is None:
            return
        if event.failed_step is not None or event.error_type is not None:
            opened.span.set_attribute("aumai.outcome", "failed")
            if event.failed_step is not None:
                opened.span.set_attribute("aumai.failed_step", event.failed_step)
            _failed(opened.span, event.error_type or "failed", event.error)
        else:
            opened.span.set_attribute("aumai.outcome", "completed")
        opened.end()

    # ------------------------------------------------------------------ steps

    def _step_started(self, event: ev.StepStarted) -> None:
        run = self._runs.get(event.transaction_id)
        if run is None or not run.recording:
            return
        run.attempts[event.step_id] = self._start(
            f"execute_tool {event.action}",
            self._parent(run, event.group),
            self._step_attributes(event),
            event.at,
        )

    def _step_ended(
        self, event: ev.StepCompleted | ev.StepFailed | ev.StepRetrying | ev.StepInterrupted
    ) -> None:
        run = self._runs.get(event.transaction_id)
        opened = None if run is None else run.attempts.pop(event.step_id, None)
        action = {"gen_ai.tool.name": event.action}
        if isinstance(event, ev.StepCompleted):
            outcome, error_type, error = "completed", None, None
        elif isinstance(event, ev.StepInterrupted):
            outcome, error_type, error = "interrupted", "interrupted", event.error
        else:
            outcome = "retrying" if isinstance(event, ev.StepRetrying) else "failed"
            error_type, error = event.error_type, event.error
        if isinstance(event, ev.StepRetrying):
            self._retries.add(1, {**action, "aumai.phase": "forward"})
        seconds = getattr(event, "duration_seconds", None)
        if seconds is None and opened is not None:
            seconds = _seconds(opened.started, event.at)
        if seconds is not None:
            self._step_duration.record(seconds, {**action, "aumai.outcome": outcome})
        if opened is None:
            return
        assert run is not None
        span = opened.span
        span.set_attribute("aumai.outcome", outcome)
        if isinstance(event, ev.StepCompleted) and event.recorded_only:
            span.set_attribute("aumai.step.recorded_only", True)
        if isinstance(event, ev.StepRetrying):
            span.set_attribute("aumai.retry.delay", event.delay_seconds)
        if error_type is not None:
            _failed(span, error_type, error)
        run.forward[event.step_id] = span.get_span_context()
        opened.end()

    def _compensation_started(self, event: ev.CompensationStarted) -> None:
        run = self._runs.get(event.transaction_id)
        if event.attempt > 1:
            self._retries.add(
                1, {"gen_ai.tool.name": event.compensating_action, "aumai.phase": "compensate"}
            )
        if run is None or not run.recording:
            return
        attempt = run.attempts.pop(event.step_id, None)
        if attempt is not None:  # left in doubt without an event saying so: end it now
            attempt.span.set_attribute("aumai.outcome", "interrupted")
            _failed(attempt.span, "interrupted", None)
            run.forward[event.step_id] = attempt.span.get_span_context()
            attempt.end()
        opened = run.compensations.get(event.step_id)
        if opened is not None:  # a retry of the same compensation
            opened.span.set_attribute("aumai.attempt", event.attempt)
            opened.span.add_event("retry", {"aumai.attempt": event.attempt})
            return
        attributes = self._step_attributes(event)
        attributes.update(
            {
                "gen_ai.tool.name": event.compensating_action,
                "aumai.phase": "compensate",
                "aumai.compensates": event.action,
            }
        )
        forward = run.forward.get(event.step_id)
        links = None if forward is None else [Link(forward, {"aumai.link": "compensates"})]
        run.compensations[event.step_id] = self._start(
            f"compensate {event.compensating_action}",
            run.run.context,
            attributes,
            event.at,
            links,
        )

    def _compensation_ended(self, event: ev.CompensationCompleted | ev.CompensationFailed) -> None:
        run = self._runs.get(event.transaction_id)
        opened = None if run is None else run.compensations.pop(event.step_id, None)
        action = {"gen_ai.tool.name": event.compensating_action}
        failed = isinstance(event, ev.CompensationFailed)
        outcome = "compensation_failed" if failed else "compensated"
        if failed:
            self._compensations_failed.add(1, action)
        seconds = getattr(event, "duration_seconds", None)
        if seconds is None and opened is not None:
            seconds = _seconds(opened.started, event.at)
        if seconds is not None:
            self._compensation_duration.record(seconds, {**action, "aumai.outcome": outcome})
        if opened is None:
            return
        span = opened.span
        span.set_attribute("aumai.outcome", outcome)
        span.set_attribute("aumai.attempt", event.attempt)
        if isinstance(event, ev.CompensationFailed):
            _failed(span, event.error_type, event.error)
        opened.end()


def instrument(
    manager: Any,
    *,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
) -> Instrumentation:
    """Trace and measure ``manager``'s transactions from its next run on.

    ``manager`` is a ``TransactionManager`` (async or blocking); the providers default
    to OpenTelemetry's global ones (no-ops until an SDK sets them). Returns the
    listener, whose ``uninstrument()`` turns it off again.
    """
    subscribe = getattr(manager, "subscribe", None)
    if subscribe is None:
        raise TypeError(
            f"instrument needs a TransactionManager (async or blocking), not "
            f"{type(manager).__name__}."
        )
    instrumentation = Instrumentation(tracer_provider, meter_provider)
    instrumentation._unsubscribe = subscribe(instrumentation)
    return instrumentation
