"""Open transactions: steps chosen and run one at a time by code, as an agent works.

``async with manager.transaction() as tx:`` begins a live transaction;
``await tx.run(...)`` runs one step now, journaled like any committed step, and returns
its handler's result so the code can choose the next step from it; ``async with
tx.parallel() as group:`` runs several steps at once. Leaving the block commits; an
exception, the deadline or a cancellation compensates every step that ran or may have
run, newest first. A crash leaves the transaction ``active``, and recovery compensates
it (the code that chose the next step is gone, so it is never resumed).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio

from ._driver import interrupted_error, timed_out_error
from .engine import StepFailed, TransactionDriver, clock
from .errors import StepFailedError
from .models import (
    RecoveryPolicy,
    RetryPolicy,
    StepStatus,
    Transaction,
    TransactionResult,
    TransactionState,
    TransactionStep,
)

if TYPE_CHECKING:
    from .manager import TransactionManager

__all__ = ["OpenTransaction", "ParallelGroup", "current_transaction"]

logger = logging.getLogger("aumai_transactions")

_ACTIVE = TransactionState.ACTIVE

_current: contextvars.ContextVar[OpenTransaction | None] = contextvars.ContextVar(
    "aumai_transactions_open_transaction", default=None
)


def current_transaction() -> OpenTransaction | None:
    """The open transaction whose ``async with`` block the caller runs in, or None.

    Tasks started inside the block see it too (they inherit the context), which is how
    an agent framework's tool calls find the transaction they are steps of.
    """
    tx = _current.get()
    return tx if tx is not None and tx.result is None else None


def _checked_key(key: object) -> str | None:
    if key is not None and (type(key) is not str or not key or key.isspace()):
        raise ValueError(f"idempotency_key must be a non-empty string or None, not {key!r}.")
    return key


def _current_task() -> object:
    """The running task: asyncio's own (cheap) where the loop is asyncio's."""
    try:
        return asyncio.current_task()
    except RuntimeError:
        return anyio.get_current_task().id


class OpenTransaction:
    """A transaction whose steps are run as the code decides them.

    Made by :meth:`TransactionManager.transaction`; use it with ``async with``. Inside
    the block, :meth:`run` runs a step and :meth:`parallel` a group of steps;
    :meth:`rollback` aborts on purpose. Afterwards :attr:`result` holds the outcome.
    """

    def __init__(self, manager: TransactionManager, timeout_seconds: float | None) -> None:
        self._manager = manager
        self.transaction: Transaction = manager.begin(timeout_seconds)
        """The underlying transaction (its steps, state and id)."""
        self.result: TransactionResult | None = None
        """The outcome, once the block has ended (or :meth:`rollback` ran)."""
        self._driver: TransactionDriver | None = None
        self._deadline: float | None = None
        self._scope: anyio.CancelScope | None = None
        self._renewal: anyio.abc.TaskGroup | None = None
        self._block_task: object = None  # the task running the async block
        self._groups = 0
        self._context_token: contextvars.Token[OpenTransaction | None] | None = None

    @property
    def transaction_id(self) -> str:
        """The transaction's id."""
        return self.transaction.transaction_id

    # ------------------------------------------------------------------ the block

    async def __aenter__(self) -> OpenTransaction:
        await self.start()
        self._scope = anyio.CancelScope(deadline=self._deadline or float("inf"))
        self._scope.__enter__()
        self._block_task = _current_task()
        self._context_token = _current.set(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        scope = self._scope
        assert scope is not None
        token, self._context_token = self._context_token, None
        if token is not None:
            try:
                _current.reset(token)
            except ValueError:  # entered in another context (the blocking facade's tasks)
                pass
        swallowed = bool(scope.__exit__(exc_type, exc, tb))
        # Past the deadline, the block's end, a cancellation by its scope and a step's
        # TimeoutError all mean the transaction timed out; a TimeoutError of the code's
        # own before the deadline is an exception like any other.
        past_deadline = self._deadline is not None and clock() >= self._deadline
        timed_out = swallowed or (past_deadline and (exc is None or isinstance(exc, TimeoutError)))
        error = None if swallowed else exc
        try:
            await self.finish(error, timed_out=timed_out)
        finally:
            await self.stop()
        if timed_out and (error is None or isinstance(error, TimeoutError)):
            raise TimeoutError(self.transaction.error) from None
        return bool(swallowed)

    async def start(self) -> None:
        """Take the lease and go ``active`` (what entering the block does)."""
        manager = self._manager
        tx = self.transaction
        if tx.state is not TransactionState.PENDING:
            raise ValueError(
                f"Transaction {tx.transaction_id} is {tx.state.value}: an open transaction "
                "is entered once (make a new one with manager.transaction())."
            )
        tx.state = _ACTIVE  # before any await, as a commit does
        driver = manager._driver(tx)
        try:
            await manager._ensure_open()
            if manager.store.durable and not manager._renewers:
                # The code between steps (an LLM call) may outlast a lease: keep it
                # renewed for as long as the block runs.
                self._renewal = anyio.create_task_group()
                await self._renewal.__aenter__()
                self._renewal.start_soon(manager.keep_leases_renewed)
            await driver.take_lease((TransactionState.PENDING,), "open")
        except BaseException:
            tx.state = TransactionState.PENDING  # nothing ran: it may be entered again
            await self.stop()
            raise
        self._driver = driver
        if tx.timeout_seconds is not None:
            elapsed = (driver.started_at - tx.created_at).total_seconds()
            self._deadline = clock() + tx.timeout_seconds - elapsed

    async def stop(self) -> None:
        """Stop renewing the lease (the end of the block)."""
        renewal, self._renewal = self._renewal, None
        if renewal is not None:
            renewal.cancel_scope.cancel()  # its own cancellation, which __aexit__ absorbs
            await renewal.__aexit__(None, None, None)
        if not self._manager._retain_finished and self.result is not None:
            self._manager.forget(self.transaction_id)

    async def finish(self, error: BaseException | None, *, timed_out: bool = False) -> None:
        """Commit, or compensate what ran when ``error`` ended the block or it timed out."""
        driver = self._driver
        if driver is None or self.result is not None:
            return  # rolled back already, or never started
        tx = self.transaction
        if error is None and not timed_out:
            in_doubt = [s for s in tx.steps if s.status is StepStatus.RUNNING]
            if in_doubt:
                # Siblings cancelled by a failure in a group the code then caught: they
                # may have had their effect, so they are undone before the commit.
                await driver.compensate_in_doubt(in_doubt)
            await driver.finish_commit()
            self.result = driver.result()
            return
        failed = error.step if isinstance(error, StepFailedError) else None
        if timed_out:
            tx.error = timed_out_error(tx, "while open; the steps that ran were compensated.")
            goal = TransactionState.FAILED
        elif isinstance(error, StepFailedError):
            tx.error = error.step.error
            goal = TransactionState.ROLLED_BACK
        elif isinstance(error, Exception):
            tx.error = f"the code in the transaction raised {type(error).__name__}: {error}"
            goal = TransactionState.ROLLED_BACK
        else:  # a cancellation, KeyboardInterrupt, SystemExit
            assert error is not None  # no error and not timed out: committed above
            tx.error = interrupted_error(tx, error)
            goal = TransactionState.FAILED
        await driver.abort(goal)
        if failed is None:  # timed out or cancelled: the step cut short, if any
            failed = next((s for s in reversed(tx.steps) if s.interrupted), None)
        self.result = driver.result(failed)
        if isinstance(error, StepFailedError):
            error.result = self.result

    # ------------------------------------------------------------------ steps

    def _live_driver(self) -> TransactionDriver:
        driver = self._driver
        if driver is None or self.result is not None or self.transaction.state is not _ACTIVE:
            state = self.transaction.state.value
            raise ValueError(
                f"Transaction {self.transaction_id} is {state}: steps run only inside its "
                "open block (`async with manager.transaction() as tx:`), before it ends."
            )
        return driver

    def _check_deadline(self) -> None:
        if self._deadline is not None and clock() >= self._deadline:
            raise TimeoutError(
                f"Transaction {self.transaction_id} is past its deadline "
                f"({self.transaction.timeout_seconds}s); no further step runs."
            )

    async def run(
        self,
        agent_id: str,
        action: str,
        data: dict[str, Any] | None = None,
        compensating_action: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        recovery: RecoveryPolicy | None = None,
        idempotency_key: str | None = None,
    ) -> Any:
        """Run one step now and return its handler's result.

        The step is journaled before its handler runs, retried by ``retry``, and cut
        short by the transaction's deadline, as in a commit. If it fails for good,
        :class:`StepFailedError` is raised; letting it leave the block compensates
        the steps that ran (catching it lets the code try something else: the failed
        step is not compensated, as it is the failing one). ``recovery`` is kept on the
        step, but recovery always compensates an open transaction.

        ``idempotency_key`` (an agent framework's tool call id, say) becomes the step's
        ``ctx.idempotency_key`` instead of the derived one, and is journaled with it. A
        key that a completed step of this transaction has already is not run again: the
        call returns that step's result (its effect happens once, and is compensated
        once). A key whose step failed runs again, as a new step.
        """
        driver = self._live_driver()
        done = self._step_with_key(_checked_key(idempotency_key), action)
        if done is not None:
            return done.result
        step = self._manager.new_step(
            agent_id, action, data, compensating_action, retry=retry, recovery=recovery, live=True
        )
        step.key = idempotency_key
        self._check_deadline()
        self._manager._check_order(self.transaction.steps, step)
        self.transaction.steps.append(step)
        await self._run(driver.run_step, step)
        return step.result

    def _step_with_key(self, key: str | None, action: str) -> TransactionStep | None:
        """The completed step that has ``key`` already (None if none); refuses a key in
        use by a step still running or pending, or by another action."""
        if key is None:
            return None
        for step in reversed(self.transaction.steps):
            if step.key != key:
                continue
            if step.action != action:
                raise ValueError(
                    f"idempotency_key {key!r} is the key of a step of action {step.action!r} "
                    f"already; a step of {action!r} needs a key of its own."
                )
            if step.status is StepStatus.FAILED:
                return None  # run again, as a new step
            if step.status is not StepStatus.COMPLETED:
                raise ValueError(
                    f"idempotency_key {key!r}: its step ({action!r}) is {step.status.value}; "
                    "a key is run again only once its step has completed or failed."
                )
            return step
        return None

    async def _run(self, run: Callable[[Any], Any], argument: Any) -> None:
        if self._deadline is None or _current_task() is self._block_task:
            # The block's own scope bounds it already (the usual case): no second timer.
            try:
                await run(argument)
            except StepFailed as failure:
                raise StepFailedError(failure.step) from failure.__cause__
            return
        # From another task (the blocking facade runs each step in a task of its own):
        # the deadline needs a scope here.
        with anyio.CancelScope(deadline=self._deadline) as scope:
            try:
                await run(argument)
            except StepFailed as failure:
                raise StepFailedError(failure.step) from failure.__cause__
        if scope.cancelled_caught:
            raise TimeoutError(
                f"Transaction {self.transaction_id} timed out after "
                f"{self.transaction.timeout_seconds}s while a step ran."
            )

    def parallel(
        self, name: str | None = None, *, max_concurrency: int | None = None
    ) -> ParallelGroup:
        """A group of steps that start together when its ``async with`` block ends."""
        self._live_driver()
        if name is None:
            self._groups += 1
            name = f"group-{self._groups}"
        if any(step.group == name for step in self.transaction.steps):
            raise ValueError(f"This transaction has a parallel group {name!r} already.")
        return ParallelGroup(self, name, max_concurrency)

    async def rollback(self) -> TransactionResult:
        """Abort on purpose: compensate every step that ran, newest first, now.

        The block then ends without committing; further steps are refused.
        """
        driver = self._live_driver()
        self.transaction.error = "rolled back by the code of the open transaction"
        await driver.abort(TransactionState.ROLLED_BACK)
        self.result = driver.result()
        return self.result


class ParallelGroup:
    """Steps of an open transaction that run at the same time.

    ``group.run(...)`` adds a step (with the same arguments as
    :meth:`OpenTransaction.run`) and returns it; when the ``async with`` block ends, the
    steps start together (at most ``max_concurrency`` at once), and the block ends when
    they all have. The first failure cancels the running siblings (in doubt, so they are
    compensated with the rest) and raises :class:`StepFailedError`. :attr:`results` then
    holds each step's result, in the order the steps were added.
    """

    def __init__(self, tx: OpenTransaction, name: str, max_concurrency: int | None) -> None:
        self._tx = tx
        self.name = name
        self._max_concurrency = max_concurrency
        self.steps: list[TransactionStep] = []
        """The group's steps, in the order they were added."""
        self._entries: list[TransactionStep] = []  # with the completed ones a key named

    def run(
        self,
        agent_id: str,
        action: str,
        data: dict[str, Any] | None = None,
        compensating_action: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        recovery: RecoveryPolicy | None = None,
        idempotency_key: str | None = None,
    ) -> TransactionStep:
        """Add a step to the group; it runs when the group's block ends.

        ``idempotency_key`` as in :meth:`OpenTransaction.run`: a key a completed step of
        the transaction has already returns that step, which does not run again (its
        result is in :attr:`results` all the same).
        """
        self._tx._live_driver()
        key = _checked_key(idempotency_key)
        if key is not None and any(s.key == key for s in self.steps):
            raise ValueError(f"idempotency_key {key!r} is given twice in group {self.name!r}.")
        done = self._tx._step_with_key(key, action)
        if done is not None:
            self._entries.append(done)
            return done
        step = self._tx._manager.new_step(
            agent_id,
            action,
            data,
            compensating_action,
            retry=retry,
            recovery=recovery,
            group=self.name,
            max_concurrency=self._max_concurrency,
            live=True,
        )
        step.key = key
        self._tx._manager._check_order(self._tx.transaction.steps + self.steps, step)
        self.steps.append(step)
        self._entries.append(step)
        return step

    @property
    def results(self) -> list[Any]:
        """Each step's result, in the order the steps were added."""
        return [step.result for step in self._entries]

    async def __aenter__(self) -> ParallelGroup:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None or not self.steps:
            return  # the block failed before anything started: nothing ran
        await self.start()

    async def start(self) -> None:
        """Run the group's steps (what leaving its block does)."""
        tx = self._tx
        driver = tx._live_driver()
        tx._check_deadline()
        tx.transaction.steps.extend(self.steps)
        await tx._run(driver.run_group, self.steps)
