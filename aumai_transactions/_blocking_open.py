"""The blocking twins of open transactions and parallel groups (re-exported by ``sync``).

``with manager.transaction() as tx:`` holds the async block open in a task of the
facade's loop while the calling thread runs the code inside it; ``tx.run`` and
``group.run`` are blocking calls into that task. Ctrl-C in a ``tx.run`` cancels that
step; the exception then ends the block, which compensates before KeyboardInterrupt
goes on.
"""

from __future__ import annotations

import functools
import threading
from concurrent.futures import Future
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.from_thread

from . import open_transaction as _open
from ._here import on_portal
from ._portal import _blocking_portal, _open_blocks, _run, _SigintGuard
from .models import RecoveryPolicy, RetryPolicy, Transaction, TransactionResult, TransactionStep

__all__ = ["OpenTransaction", "ParallelGroup"]


class OpenTransaction:
    """Blocking twin of :class:`aumai_transactions.OpenTransaction`:
    ``with manager.transaction() as tx:``, then ``tx.run(...)`` for each step.

    The async block is held open by one task in the facade's loop, which enters and
    leaves it (its deadline's cancel scope and its lease renewal's task group belong to
    one task); each ``tx.run`` and each group is a blocking call of its own in between.
    The exception that ends the ``with`` block, KeyboardInterrupt included, is handed
    to the async block's exit, which compensates before it propagates. Ctrl-C during
    ``tx.run`` cancels that step (in doubt, so compensated with the rest); Ctrl-C
    while the block ends is held until it has committed or compensated, and then
    raised. Code between the steps runs in the calling thread, so the deadline cannot
    cut it short: the next ``tx.run``, or the end of the block, raises TimeoutError.
    """

    def __init__(self, open_transaction: _open.OpenTransaction) -> None:
        self._open = open_transaction
        self._holder: Future[bool] | None = None
        self._entered = threading.Event()  # entering is over, either way
        self._inside = False  # the async block was entered
        self._left = threading.Event()  # the holder has ended
        self._exc_info: tuple[Any, Any, Any] = (None, None, None)
        # Made in the loop (they belong to it) by _prepare.
        self._entering: anyio.CancelScope | None = None
        self._leave: anyio.Event | None = None

    @property
    def transaction(self) -> Transaction:
        """The underlying transaction (its steps, state and id)."""
        return self._open.transaction

    @property
    def transaction_id(self) -> str:
        """The transaction's id."""
        return self._open.transaction_id

    @property
    def result(self) -> TransactionResult | None:
        """The outcome, once the block has ended (or :meth:`rollback` ran)."""
        return self._open.result

    # ------------------------------------------------------------------ the block

    async def _prepare(self) -> None:
        self._entering = anyio.CancelScope()
        self._leave = anyio.Event()

    async def _hold(self) -> bool:
        """The whole async block, in this one task: enter, wait to be told to leave,
        leave with the exception that ended the ``with`` block (or none)."""
        assert self._entering is not None and self._leave is not None
        with on_portal():  # the block drives its transaction in this task
            return await self._hold_block()

    async def _hold_block(self) -> bool:
        assert self._entering is not None and self._leave is not None
        try:
            with self._entering:  # cancelled (by Ctrl-C) only while entering
                try:
                    await self._open.__aenter__()
                    self._inside = True
                finally:
                    self._entered.set()
                # The code of the block runs elsewhere; the deadline's scope, which
                # this task is inside, must not cut this wait short: the block's exit
                # tells a deadline that passed meanwhile by the clock.
                with anyio.CancelScope(shield=True):
                    await self._leave.wait()
                return await self._open.__aexit__(*self._exc_info)
            return False  # entering was cancelled
        finally:
            self._left.set()

    def _stop_entering(self) -> None:
        """(In the loop.) Cancel the entering, unless the block is entered already."""
        assert self._entering is not None
        if not self._inside:
            self._entering.cancel()

    def _tell_holder_to_leave(self, portal: anyio.from_thread.BlockingPortal) -> None:
        assert self._leave is not None
        _open_blocks.discard(self)
        portal.call(self._leave.set)

    def _abandon(self, portal: anyio.from_thread.BlockingPortal) -> None:
        """At exit, a block never left: end it as interrupted (compensated)."""
        self._exc_info = (SystemExit, SystemExit(), None)
        self._tell_holder_to_leave(portal)

    def _wait_for_holder(self, guard: _SigintGuard, interrupted: bool) -> None:
        """Wait until the block has ended; ``interrupted``: by a Ctrl-C already told."""
        if not self._left.is_set():
            guard.wait_out(
                self._left,
                None
                if interrupted
                else "Interrupted: the open transaction ends first (it commits, or "
                "compensates what ran), then KeyboardInterrupt is raised. Ctrl-C again "
                "is ignored.",
            )

    def __enter__(self) -> Self:
        portal = _blocking_portal()
        portal.call(self._prepare)
        with _SigintGuard() as guard:  # as in _Call.run: one Ctrl-C, one effect
            self._holder = holder = portal.start_task_soon(self._hold)  # a SIGINT is held
            try:
                guard.armed = guard.installed
                if guard.interrupts:  # it came while the holder was being handed over
                    raise KeyboardInterrupt
                self._entered.wait()
                guard.armed = False
            except KeyboardInterrupt:
                guard.armed = False
                portal.call(self._stop_entering)
                if not self._inside:
                    self._wait_for_holder(guard, interrupted=True)
        if guard.interrupts:
            stop = KeyboardInterrupt()
            if self._inside:  # it came just as the block was entered: leave it so
                self.__exit__(KeyboardInterrupt, stop, None)
            raise stop
        if not self._inside:
            holder.result()  # raises what kept the block from being entered
            raise RuntimeError("the open transaction's block could not be entered")
        _open_blocks.add(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        with _SigintGuard() as guard:  # first: a Ctrl-C now must not skip the compensation
            holder = self._holder
            assert holder is not None
            self._exc_info = (exc_type, exc, tb)
            self._tell_holder_to_leave(_blocking_portal())
            self._wait_for_holder(guard, isinstance(exc, KeyboardInterrupt))
        interrupted = guard.interrupts and not isinstance(exc, KeyboardInterrupt)
        try:
            swallowed = holder.result()
        except BaseException as error:
            if interrupted:  # it ended as it had to; now the program stops
                raise KeyboardInterrupt from error
            raise
        finally:
            self._exc_info = (None, None, None)  # it holds the block's frames
        if interrupted:
            raise KeyboardInterrupt
        return swallowed

    # ------------------------------------------------------------------ steps

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
    ) -> Any:
        """See :meth:`aumai_transactions.OpenTransaction.run`."""
        return _run(
            functools.partial(
                self._open.run,
                agent_id,
                action,
                data,
                compensating_action,
                retry=retry,
                recovery=recovery,
                idempotency_key=idempotency_key,
            )
        )

    def parallel(
        self, name: str | None = None, *, max_concurrency: int | None = None
    ) -> ParallelGroup:
        """See :meth:`aumai_transactions.OpenTransaction.parallel`; use it with ``with``."""
        return ParallelGroup(self._open.parallel(name, max_concurrency=max_concurrency))

    def rollback(self) -> TransactionResult:
        """See :meth:`aumai_transactions.OpenTransaction.rollback`."""
        return _run(self._open.rollback)


class ParallelGroup:
    """Blocking twin of :class:`aumai_transactions.ParallelGroup`: ``with tx.parallel()
    as group:``, ``group.run(...)`` for each step; they start together as the block ends."""

    def __init__(self, group: _open.ParallelGroup) -> None:
        self._group = group

    @property
    def name(self) -> str:
        """The group's name (unique in its transaction)."""
        return self._group.name

    @property
    def steps(self) -> list[TransactionStep]:
        """The group's steps, in the order they were added."""
        return self._group.steps

    @property
    def results(self) -> list[Any]:
        """Each step's result, in the order the steps were added."""
        return self._group.results

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
        """See :meth:`aumai_transactions.ParallelGroup.run`."""
        return self._group.run(
            agent_id,
            action,
            data,
            compensating_action,
            retry=retry,
            recovery=recovery,
            idempotency_key=idempotency_key,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _run(self._group.__aexit__, exc_type, exc, tb)
