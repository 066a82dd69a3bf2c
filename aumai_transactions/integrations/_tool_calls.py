"""What every adapter shares: tool calls run as steps of the open transaction in scope.

A framework calls a tool; :meth:`ToolCallRunner.call` runs the call as a step of the
transaction whose ``async with manager.transaction()`` block it runs in, with the tool
call id as the step's idempotency key. Calls that the framework starts together (the
tool calls of one model response, which both frameworks run as concurrent tasks) form
one parallel group: the first call to arrive gathers the others for as long as more
keep arriving without any of them waiting on I/O, then runs them as
``tx.parallel()``. A call with a key whose step has completed returns that step's
result without running again; one whose key is still in flight waits for it.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Any

import anyio
import anyio.lowlevel

from .._actions import Action, Actions
from ..errors import StepFailedError
from ..models import StepStatus, TransactionStep, storable
from ..open_transaction import OpenTransaction, current_transaction

__all__ = ["ToolCallRunner", "missing_framework", "no_open_transaction", "tool_actions"]

_QUIET_ROUNDS = 3
"""Event-loop rounds in which no further call arrived: the group is complete."""


def missing_framework(framework: str, extra: str, exc: ModuleNotFoundError) -> ImportError:
    """The error for an adapter imported without its framework installed."""
    return ImportError(
        f"This adapter needs {framework}, which is not installed ({exc}): "
        f"pip install 'aumai-transactions[{extra}]'."
    )


def no_open_transaction(framework: str, run: str, tool: str | None = None) -> RuntimeError:
    """The error for a tool call (or agent run) outside any open transaction; ``run``
    is how the framework runs an agent (``agent.run(...)``)."""
    what = f"Tool {tool!r} was called" if tool else f"A {framework} agent run started"
    return RuntimeError(
        f"{what} outside an open transaction: each tool call is a step of one. Open it "
        f"around the agent run: `async with manager.transaction() as tx: await {run}` "
        "(manager = TransactionManager(actions))."
    )


def tool_actions(actions: Actions, names: Iterable[str] | None) -> list[Action[..., Any]]:
    """The actions to offer as tools: ``names`` (each registered), or by default every
    action that is not some action's compensation (the model does not call undos)."""
    if not isinstance(actions, Actions):
        raise TypeError(f"actions must be an Actions registry, not {type(actions).__name__}.")
    actions.check()
    if names is None:
        undos = {a.compensate for a in actions.actions}
        return [a for a in actions.actions if a.name not in undos]
    chosen: list[Action[..., Any]] = []
    for name in names:
        action = actions.get_action(name)
        if action is None:
            raise ValueError(
                f"{name!r} is not a registered action (registered: {', '.join(sorted(actions))})."
            )
        chosen.append(action)
    return chosen


class _Call:
    __slots__ = ("action", "data", "done", "error", "key", "result", "step")

    def __init__(self, action: str, data: dict[str, Any], key: str | None) -> None:
        self.action = action
        self.data = data
        self.key = key
        self.step: TransactionStep | None = None
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = anyio.Event()

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


class ToolCallRunner:
    """Runs tool calls as steps of the open transaction in scope (see the module doc).

    ``framework`` and ``run`` (how it runs an agent) name it in errors;
    ``retry_error(message)`` makes the framework's "ask the model again" exception, for
    a call that did not run because a call next to it failed; ``passes_through(exc)``
    says whether a handler's exception is one the framework handles itself (a model
    retry), to be raised as it is instead of as the step's failure.
    """

    def __init__(
        self,
        actions: Actions,
        *,
        agent_id: str,
        framework: str,
        run: str,
        retry_error: Callable[[str], BaseException],
        passes_through: Callable[[BaseException], bool],
    ) -> None:
        if type(agent_id) is not str or not agent_id or agent_id.isspace():
            raise ValueError(f"agent_id must be a non-empty string, not {agent_id!r}.")
        self.actions = actions
        self.agent_id = agent_id
        self.framework = framework
        self.run = run
        self._retry_error = retry_error
        self._passes_through = passes_through
        self._gathering: weakref.WeakKeyDictionary[OpenTransaction, list[_Call]] = (
            weakref.WeakKeyDictionary()
        )
        self._in_flight: weakref.WeakKeyDictionary[OpenTransaction, dict[str, _Call]] = (
            weakref.WeakKeyDictionary()
        )

    def open_transaction(self, tool: str | None = None) -> OpenTransaction:
        """The open transaction in scope; RuntimeError saying how to open one if none."""
        tx = current_transaction()
        if tx is None:
            raise no_open_transaction(self.framework, self.run, tool)
        return tx

    async def call(self, action: str, arguments: dict[str, Any], call_id: str | None) -> Any:
        """Run one tool call as a step and return its result (or raise its failure)."""
        tx = self.open_transaction(action)
        in_flight = self._in_flight.setdefault(tx, {})
        if call_id is not None and call_id in in_flight:
            twin = in_flight[call_id]  # the same call again while it runs: its outcome
            await twin.done.wait()
            return twin.outcome()
        call = _Call(action, storable(arguments), call_id)
        if call_id is not None:
            in_flight[call_id] = call
        try:
            batch = self._gathering.get(tx)
            if batch is not None:
                batch.append(call)
                await call.done.wait()
            else:
                await self._lead(tx, call)
        finally:
            if call_id is not None:
                in_flight.pop(call_id, None)
        return call.outcome()

    async def _lead(self, tx: OpenTransaction, call: _Call) -> None:
        batch = [call]
        self._gathering[tx] = batch
        try:
            try:
                quiet = 0
                while quiet < _QUIET_ROUNDS:
                    arrived = len(batch)
                    await anyio.lowlevel.checkpoint()
                    quiet = quiet + 1 if len(batch) == arrived else 0
            finally:
                del self._gathering[tx]  # closed: a later call starts a batch of its own
            if len(batch) == 1:
                await self._run_one(tx, call)
            else:
                await self._run_group(tx, batch)
        finally:
            for member in batch:
                if not member.done.is_set():  # the leader was cancelled meanwhile
                    if member.error is None and member.step is None:
                        member.error = self._retry_error(
                            f"{member.action!r} did not run: the calls made with it were "
                            "cancelled. Call it again if it is still needed."
                        )
                    member.done.set()

    def _failure(self, error: BaseException) -> BaseException:
        cause = error.__cause__ if isinstance(error, StepFailedError) else None
        if cause is not None and self._passes_through(cause):
            return cause
        return error

    async def _run_one(self, tx: OpenTransaction, call: _Call) -> None:
        try:
            call.result = await tx.run(
                self.agent_id, call.action, call.data, idempotency_key=call.key
            )
        except Exception as exc:
            call.error = self._failure(exc)
        call.done.set()

    async def _run_group(self, tx: OpenTransaction, batch: list[_Call]) -> None:
        failure: StepFailedError | None = None
        try:
            async with tx.parallel() as group:
                for call in batch:
                    try:
                        call.step = group.run(
                            self.agent_id, call.action, call.data, idempotency_key=call.key
                        )
                    except (TypeError, ValueError) as exc:  # refused: it alone does not run
                        call.error = exc
        except StepFailedError as exc:
            failure = exc
        for call in batch:
            step = call.step
            if call.error is not None or step is None:
                pass
            elif step.status is StepStatus.COMPLETED:
                call.result = step.result
            elif failure is not None and step is failure.step:
                call.error = self._failure(failure)
            elif failure is not None:
                call.error = self._retry_error(
                    f"{call.action!r} was cancelled because {failure.step.action!r}, called "
                    f"at the same time, failed: {(failure.step.error or '').rstrip('.')}. It "
                    "will be undone; call "
                    "it again if it is still needed."
                )
            call.done.set()
