"""Loading the handler mapping named by ``--handlers module:attr`` or ``path/to/file.py:attr``.

Only what the user names is imported: no entry points, no scanning. While the module
is imported, the current directory is first on ``sys.path`` (as ``python -m`` and
uvicorn do), so a ``handlers.py`` next to the user resolves as ``handlers:HANDLERS``; a
file path puts the file's own directory there instead, so its sibling imports work.

Only while: the entry is taken off again once the import is done, so ``sys.path`` is
as it was. Left there, it would shadow every module imported later: a ``sqlite3.py``
or ``json.py`` in the working directory would replace the standard library's for the
store and everything else the command imports after the handlers. A handler module's
own imports belong at its top (they happen during the import); one that imports a
sibling lazily, inside a handler, needs that sibling to be installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from .._actions import Actions
from ._errors import CliError

__all__ = ["Handlers", "absolute_spec", "check_handlers", "load_handlers"]

Handlers = dict[str, Callable[..., Any]]

_EXAMPLE = "e.g. myapp.handlers:HANDLERS or ./handlers.py:HANDLERS"


@contextmanager
def _importable_from(directory: str) -> Iterator[None]:
    """``directory`` first on ``sys.path`` for the block only (unless already there)."""
    if directory in sys.path:
        yield
        return
    sys.path.insert(0, directory)
    try:
        yield
    finally:
        # Take off our entry only: the module may have added its own, which stay.
        try:
            sys.path.remove(directory)
        except ValueError:
            pass


def _import_file(path: Path, spec: str) -> ModuleType:
    if not path.is_file():
        raise CliError(f"--handlers {spec!r}: there is no file {path}.")
    name = f"_aumai_handlers_{path.stem}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise CliError(f"--handlers {spec!r}: {path} cannot be imported as Python.")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        with _importable_from(str(path.resolve().parent)):
            module_spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _looks_like_file(target: str) -> bool:
    return target.endswith(".py") or os.sep in target or "/" in target


def absolute_spec(spec: str) -> str:
    """``spec`` with a file path made absolute, so that it names the same handlers from
    any directory (a module name is left as it is: it resolves from where it is run)."""
    target, sep, attribute = spec.strip().rpartition(":")
    if not sep or not target or not _looks_like_file(target):
        return spec
    return f"{Path(target).expanduser().absolute()}:{attribute}"


def _import(target: str, spec: str) -> ModuleType:
    looks_like_file = _looks_like_file(target)
    try:
        if looks_like_file:
            return _import_file(Path(target).expanduser(), spec)
        with _importable_from(os.getcwd()):
            return importlib.import_module(target)
    except CliError:
        raise
    except ModuleNotFoundError as exc:
        missing = exc.name or str(exc)
        if not looks_like_file and (target == missing or target.startswith(missing + ".")):
            raise CliError(
                f"--handlers {spec!r}: no module named {missing!r} (run from the directory "
                f"that holds it, or give a path to a .py file: {_EXAMPLE})."
            ) from None
        raise CliError(
            f"--handlers {spec!r}: importing {target!r} failed: it needs the module "
            f"{missing!r}, which is not installed."
        ) from None
    except SyntaxError as exc:
        raise CliError(
            f"--handlers {spec!r}: {exc.filename or target}, line {exc.lineno}: "
            f"syntax error: {exc.msg}."
        ) from None
    except Exception as exc:
        raise CliError(
            f"--handlers {spec!r}: importing {target!r} raised {type(exc).__name__}: {exc}"
        ) from None


def _mapping_names(module: ModuleType) -> list[str]:
    return sorted(
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and isinstance(value, Mapping)
    )


def load_handlers(spec: str) -> Handlers | Actions:
    """The mapping of action name to callable that ``spec`` names: a dict, or an
    :class:`Actions` registry (kept as it is, so its compensations are the defaults).

    Raises CliError when the module does not import, the attribute is missing, the
    value is not a mapping of non-empty strings to callables, or a registry's
    compensation names an action it does not have.
    """
    target, sep, attribute = spec.strip().rpartition(":")
    if not sep or not target or not attribute:
        raise CliError(
            f"--handlers {spec!r} does not name a mapping: use module:attribute ({_EXAMPLE})."
        )
    module = _import(target, spec)
    value: Any = module
    for part in attribute.split("."):
        if not hasattr(value, part):
            names = _mapping_names(module)
            hint = f" Mappings it defines: {', '.join(names)}." if names else ""
            raise CliError(f"--handlers {spec!r}: {target!r} has no attribute {attribute!r}.{hint}")
        value = getattr(value, part)
    if isinstance(value, Actions):
        try:
            value.check()
        except ValueError as exc:
            raise CliError(f"--handlers {spec!r}: {exc}") from None
        return value
    if not isinstance(value, Mapping):
        raise CliError(
            f"--handlers {spec!r} is a {type(value).__name__}, not a mapping of action "
            "names to callables (such as a dict)."
        )
    handlers: Handlers = {}
    for action, func in value.items():
        if not isinstance(action, str) or not action:
            raise CliError(f"--handlers {spec!r}: the key {action!r} is not an action name.")
        if not callable(func):
            raise CliError(
                f"--handlers {spec!r}: the handler of {action!r} is a "
                f"{type(func).__name__}, not a callable."
            )
        handlers[action] = func
    return handlers


def check_handlers(handlers: Handlers | Actions, spec: str, needed: Iterable[str | None]) -> None:
    """Refuse to go on when ``handlers`` lacks an action in ``needed``.

    The library records an action with no handler without running anything; from a
    terminal that is almost always a wrong ``--handlers``, so the CLI stops before
    anything is written instead.
    """
    missing = sorted({name for name in needed if name is not None and name not in handlers})
    if missing:
        known = ", ".join(sorted(handlers)) or "none"
        raise CliError(
            f"--handlers {spec!r} has no handler for {', '.join(map(repr, missing))} "
            f"(it has: {known}); nothing was run."
        )
