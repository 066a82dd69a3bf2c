"""Actions: functions registered with their compensation, retry policy and effect.

A handler dict says which code runs an action; an :class:`Actions` registry also says
what undoes it, how often to retry it, whether recovery may run it again, and whether it
changes anything at all. A manager given the registry fills those in for every step of
a registered action, so ``add_step`` (and ``tx.run``, sagas, saga files) no longer
repeat the compensation's name, and an agent framework adapter can turn each
registered action into a tool.

Registered functions are *tool-shaped*: the step's data are their keyword arguments
(``book_flight(flight="TP1351")`` for ``data={"flight": "TP1351"}``), as an agent
framework calls a tool. A parameter annotated :class:`StepContext` receives the step's
context instead (its idempotency key, earlier results). A compensation is called with
the data of the step it undoes (those of its parameters it names) and, in a parameter
named ``result``, that step's recorded result.
"""

from __future__ import annotations

import inspect
import logging
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, Literal, ParamSpec, TypeVar, overload

from .handlers import _CONTEXT_ANNOTATION, ActionHandler, StepContext
from .models import RecoveryPolicy, RetryPolicy, TransactionStep

__all__ = ["Action", "Actions", "Effect"]

logger = logging.getLogger("aumai_transactions")

Effect = Literal["compensable", "read_only", "irreversible"]
"""What running an action does to the world: something a compensation undoes, nothing
(a search), or something nothing can undo (an email sent)."""

_EFFECTS = ("compensable", "read_only", "irreversible")
_P = ParamSpec("_P")
_R = TypeVar("_R")


def _checked_name(name: object, what: str) -> str:
    if type(name) is not str or not name or name.isspace():
        raise ValueError(f"{what} must be a non-empty string, not {name!r}.")
    return name


def _context_parameter(signature: inspect.Signature) -> str | None:
    """The name of the parameter annotated ``StepContext`` (also as a string), if any."""
    for parameter in signature.parameters.values():
        annotation = parameter.annotation
        if annotation is StepContext:
            return parameter.name
        if annotation is not inspect.Parameter.empty and _CONTEXT_ANNOTATION.search(
            annotation if isinstance(annotation, str) else repr(annotation)
        ):
            return parameter.name
    return None


class Action(Generic[_P, _R]):
    """A function registered with :class:`Actions`; calling it calls the function.

    ``name`` is the action name steps use; ``compensate`` the name of the action that
    undoes it (or None); ``retry`` the default retry policy of its steps; ``effect``
    one of ``compensable``, ``read_only``, ``irreversible`` (None when not said and no
    compensation is registered); ``idempotent`` says running it twice does no harm, so
    recovery may resume it. Use :meth:`compensation` as a decorator to register the
    function that undoes it.
    """

    def __init__(
        self,
        registry: Actions,
        name: str,
        func: Callable[_P, _R],
        *,
        compensate: str | None,
        retry: RetryPolicy | None,
        idempotent: bool,
        effect: Effect | None,
    ) -> None:
        self.name = name
        self.func = func
        self.compensate = compensate
        self.retry = retry
        self.idempotent = idempotent
        self._effect = effect
        self._registry = registry
        self.__doc__ = func.__doc__
        try:
            self.signature = inspect.signature(func)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"Action {name!r}: the signature of {func!r} cannot be read.") from exc
        self.context_parameter = _context_parameter(self.signature)
        parameters = self.signature.parameters.values()
        self._takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
        self._names = frozenset(p.name for p in parameters) - {self.context_parameter}
        self.is_async = inspect.iscoroutinefunction(func)
        self.handler: ActionHandler = self._make_handler()
        """The action in the engine's calling convention, ``handler(action, data, ctx)``."""

    def __call__(self, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        return self.func(*args, **kwargs)

    def __repr__(self) -> str:
        undo = f", compensate={self.compensate!r}" if self.compensate else ""
        return f"<Action {self.name!r}{undo}, effect={self.effect!r}>"

    @property
    def effect(self) -> Effect | None:
        """The effect class: as given, else ``compensable`` when a compensation is set."""
        if self._effect is None and self.compensate is not None:
            return "compensable"
        return self._effect

    @property
    def recovery(self) -> RecoveryPolicy | None:
        """The recovery policy its steps get by default: ``resume`` when running it again
        is safe (idempotent or read-only), ``compensate`` for an irreversible action that
        is not idempotent (never repeated), else None (the ``recover()`` policy decides)."""
        if self.idempotent or self._effect == "read_only":
            return "resume"
        if self._effect == "irreversible":
            return "compensate"
        return None

    @overload
    def compensation(self, func: Callable[..., Any], /) -> Action[..., Any]: ...

    @overload
    def compensation(
        self, func: None = None, /, *, name: str | None = None, retry: RetryPolicy | None = None
    ) -> Callable[[Callable[..., Any]], Action[..., Any]]: ...

    def compensation(
        self,
        func: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> Action[..., Any] | Callable[[Callable[..., Any]], Action[..., Any]]:
        """Register the decorated function as the action that undoes this one.

        ``@book_flight.compensation`` or ``@book_flight.compensation(name="...")``; the
        name defaults to the function's. It is registered as an action of its own too
        (and may be the one ``compensate=`` named already).
        """

        def register(undo: Callable[..., Any]) -> Action[..., Any]:
            undo_name = name if name is not None else getattr(undo, "__name__", None)
            if self.compensate is not None and undo_name != self.compensate:
                raise ValueError(
                    f"Action {self.name!r} has a compensation already ({self.compensate!r})."
                )
            if self._effect in ("read_only", "irreversible"):
                raise ValueError(
                    f"Action {self.name!r} is {self._effect}: it has nothing a compensation "
                    "could undo (register it as compensable to give it one)."
                )
            undo_action = self._registry._add(name, undo, retry=retry)
            self.compensate = undo_action.name
            return undo_action

        if func is not None:
            return register(func)
        return register

    # ------------------------------------------------------------------ calling

    def check_data(self, data: Mapping[str, Any]) -> None:
        """Raise TypeError when ``data`` are not keyword arguments this action accepts."""
        unknown = [] if self._takes_any else sorted(set(data) - self._names)
        try:
            if unknown:
                raise TypeError(f"it has no parameter {', '.join(map(repr, unknown))}")
            self.tool_signature.bind(**data)
        except TypeError as exc:
            plain = [p.replace(annotation=p.empty) for p in self.tool_signature.parameters.values()]
            raise TypeError(
                f"The data of a step of action {self.name!r} do not fit "
                f"{self.func.__name__}{inspect.Signature(plain)}: {exc}."
            ) from None

    @property
    def tool_signature(self) -> inspect.Signature:
        """The signature without the StepContext parameter: what a tool call passes."""
        signature = self.signature
        if self.context_parameter is None:
            return signature
        return signature.replace(
            parameters=[p for n, p in signature.parameters.items() if n != self.context_parameter]
        )

    def tool_function(self) -> Callable[..., Any]:
        """A stand-in with the action's name, docstring, tool signature and resolved
        annotations, for a framework to build the tool's schema from (never called)."""

        def stand_in(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError(f"the stand-in of action {self.name!r} is not meant to run")

        try:
            hints = typing.get_type_hints(self.func, include_extras=True)
        except Exception:  # unresolvable annotations: left out of the schema
            hints = {}
        hints.pop(self.context_parameter or "", None)
        stand_in.__name__ = stand_in.__qualname__ = self.name
        stand_in.__doc__ = self.func.__doc__
        stand_in.__signature__ = self.tool_signature  # type: ignore[attr-defined]
        stand_in.__annotations__ = hints
        stand_in.__module__ = getattr(self.func, "__module__", __name__)
        return stand_in

    def _arguments(self, data: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
        if ctx.phase == "compensate":
            # An undo takes what it names of the undone step's data, and its result.
            names = self._names
            taken = data if self._takes_any else {k: v for k, v in data.items() if k in names}
            kwargs = dict(taken)
            if "result" in self._names:
                kwargs["result"] = ctx.results.get(ctx.step_id)
        else:
            kwargs = dict(data)
        if self.context_parameter is not None:
            kwargs[self.context_parameter] = ctx
        return kwargs

    def _make_handler(self) -> ActionHandler:
        func: Callable[..., Any] = self.func
        arguments = self._arguments
        if self.is_async:

            async def call_async(action: str, data: dict[str, Any], ctx: StepContext) -> Any:
                return await func(**arguments(data, ctx))

            return call_async

        def call(action: str, data: dict[str, Any], ctx: StepContext) -> Any:
            return func(**arguments(data, ctx))

        return call


class Actions(Mapping[str, ActionHandler]):
    """A registry of actions, each with its compensation, retry policy and effect.

    Register with ``@actions.action()`` (the name defaults to the function's) or
    ``@actions.action("book_flight", compensate="cancel_flight", retry=RetryPolicy(...),
    idempotent=True, effect="compensable")``, and pair an undo with
    ``@book_flight.compensation``. Give the registry to a manager in place of the handler
    dict: ``TransactionManager(actions)``. A step of a registered action then gets its
    compensation, retry policy and recovery policy by default (what a step names
    explicitly wins); a read-only action's steps are recorded with nothing to undo.

    It is a mapping of action name to handler (in the engine's calling convention), so
    it goes wherever a handler dict goes, the CLI's ``--handlers`` included.
    """

    def __init__(self) -> None:
        self._actions: dict[str, Action[..., Any]] = {}

    # ------------------------------------------------------------------ registering

    @overload
    def action(self, name: Callable[_P, _R], /) -> Action[_P, _R]: ...

    @overload
    def action(
        self,
        name: str | None = None,
        /,
        *,
        compensate: str | None = None,
        retry: RetryPolicy | None = None,
        idempotent: bool = False,
        effect: Effect | None = None,
    ) -> Callable[[Callable[_P, _R]], Action[_P, _R]]: ...

    def action(
        self,
        name: str | Callable[_P, _R] | None = None,
        /,
        *,
        compensate: str | None = None,
        retry: RetryPolicy | None = None,
        idempotent: bool = False,
        effect: Effect | None = None,
    ) -> Action[_P, _R] | Callable[[Callable[_P, _R]], Action[_P, _R]]:
        """Register the decorated function (sync or async) as an action.

        ``compensate`` names the action that undoes it (registered before or after);
        ``retry`` is its steps' default retry policy; ``idempotent=True`` says running it
        again is safe, so recovery may resume it; ``effect`` is ``compensable`` (the
        default when a compensation is given), ``read_only`` (no effect: its steps are
        recorded with nothing to undo) or ``irreversible`` (cannot be undone: put its
        steps last).
        """
        if callable(name):  # bare @actions.action
            return self._add(None, name)
        if name is not None:
            _checked_name(name, "An action name")
        if compensate is not None:
            _checked_name(compensate, "compensate")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy, not {type(retry).__name__}.")
        if type(idempotent) is not bool:
            raise TypeError(f"idempotent must be True or False, not {idempotent!r}.")
        if effect is not None and effect not in _EFFECTS:
            raise ValueError(
                f"effect must be one of {', '.join(map(repr, _EFFECTS))} or None, not {effect!r}."
            )
        if compensate is not None and effect in ("read_only", "irreversible"):
            raise ValueError(
                f"An action that is {effect} has nothing to undo: it cannot have "
                f"compensate={compensate!r}."
            )

        def register(func: Callable[_P, _R]) -> Action[_P, _R]:
            return self._add(
                name, func, compensate=compensate, retry=retry, idempotent=idempotent, effect=effect
            )

        return register

    def _add(
        self,
        name: str | None,
        func: Callable[_P, _R],
        *,
        compensate: str | None = None,
        retry: RetryPolicy | None = None,
        idempotent: bool = False,
        effect: Effect | None = None,
    ) -> Action[_P, _R]:
        if isinstance(func, Action):
            func = func.func
        if not callable(func):
            raise TypeError(
                f"@actions.action() decorates a function (sync or async), "
                f"not a {type(func).__name__} ({func!r:.60})."
            )
        if name is None:
            name = getattr(func, "__name__", None)
            if not isinstance(name, str) or name == "<lambda>":
                raise ValueError(
                    f"{func!r:.60} has no usable name: give one, @actions.action('name')."
                )
        if name in self._actions:
            raise ValueError(
                f"Two actions are registered under the name {name!r} "
                f"({self._actions[name].func!r:.60} and {func!r:.60}); give one another name."
            )
        if compensate == name:
            raise ValueError(f"Action {name!r} cannot be its own compensation.")
        action = Action(
            self,
            name,
            func,
            compensate=compensate,
            retry=retry,
            idempotent=idempotent,
            effect=effect,
        )
        self._actions[name] = action
        return action

    # ------------------------------------------------------------------ reading

    def __getitem__(self, name: str) -> ActionHandler:
        return self._actions[name].handler

    def __iter__(self) -> Iterator[str]:
        return iter(self._actions)

    def __len__(self) -> int:
        return len(self._actions)

    def __repr__(self) -> str:
        return f"<Actions {sorted(self._actions)}>"

    def get_action(self, name: str) -> Action[..., Any] | None:
        """The registered action of that name, or None."""
        return self._actions.get(name)

    @property
    def actions(self) -> list[Action[..., Any]]:
        """Every registered action, in registration order."""
        return list(self._actions.values())

    def check(self) -> None:
        """Raise ValueError when a compensation names an action that is not registered,
        or a ``compensable`` action has no compensation (what a manager checks when it is
        given the registry)."""
        for action in self._actions.values():
            if action.compensate is not None and action.compensate not in self._actions:
                raise ValueError(
                    f"Action {action.name!r} is compensated by {action.compensate!r}, which is "
                    f"not a registered action (registered: {', '.join(sorted(self._actions))})."
                )
            if action._effect == "compensable" and action.compensate is None:
                raise ValueError(
                    f"Action {action.name!r} is compensable but has no compensation: give "
                    f"compensate='...' or decorate its undo with @{action.name}.compensation."
                )

    # ------------------------------------------------------------------ steps

    def step_defaults(
        self,
        action: str,
        data: dict[str, Any],
        compensating_action: str | None,
        retry: RetryPolicy | None,
        recovery: RecoveryPolicy | None,
    ) -> tuple[str | None, RetryPolicy | None, RecoveryPolicy | None]:
        """A step's compensation, retry and recovery policies with this registry's
        defaults filled in (what the step names wins); checks its data fit the action."""
        registered = self._actions.get(action)
        if registered is None:
            return compensating_action, retry, recovery
        registered.check_data(data)
        return (
            compensating_action if compensating_action is not None else registered.compensate,
            retry if retry is not None else registered.retry,
            recovery if recovery is not None else registered.recovery,
        )

    def effect_of(self, step: TransactionStep) -> Effect | None:
        """The effect class of a step: its registered action's, ``compensable`` for an
        unregistered action with a compensation, else None."""
        registered = self._actions.get(step.action)
        if registered is not None and registered.effect is not None:
            return registered.effect
        return "compensable" if step.compensating_action is not None else None

    def ordering_problem(self, earlier: list[TransactionStep], step: TransactionStep) -> str | None:
        """Why ``step`` should not follow ``earlier`` (an irreversible step before a
        compensable one: a failure later could not undo it), or None."""
        if step.compensating_action is None:
            return None
        irreversible = next(
            (s for s in reversed(earlier) if self.effect_of(s) == "irreversible"), None
        )
        if irreversible is None:
            return None
        return (
            f"step {step.action!r} (compensable) comes after {irreversible.action!r}, "
            f"which is irreversible: if {step.action!r} or a later step fails, "
            f"{irreversible.action!r} cannot be undone. Put irreversible steps last."
        )
