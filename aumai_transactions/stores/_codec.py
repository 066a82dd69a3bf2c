"""How the durable stores write a step as JSON (never pickle): shared by every backend."""

from __future__ import annotations

import functools
from typing import Any, get_args

from pydantic import BaseModel
from pydantic_core import PydanticSerializationError

from ..models import TransactionStep

__all__ = ["step_json"]


def _none_means_default(model: type[BaseModel]) -> bool:
    """True when every field of ``model`` that may hold None defaults to None.

    Then a step can be stored without its None fields (about a third smaller: less to
    write, send, fsync and parse) and still load back equal, a missing field taking
    its default. Checked rather than assumed: a future field with another default
    falls back to storing every field.
    """
    for field_info in model.model_fields.values():
        if field_info.default is None:
            continue
        annotation = field_info.annotation
        if annotation is Any or type(None) in get_args(annotation):
            return False
    return True


# pydantic's serializer called directly: this is on the hot path of every write.
_step_to_json = functools.partial(
    TransactionStep.__pydantic_serializer__.to_json,
    exclude_none=_none_means_default(TransactionStep),
)


def step_json(step: TransactionStep, transaction_id: str) -> str:
    """The whole step as JSON; a value JSON cannot hold is a TypeError naming the step."""
    try:
        return _step_to_json(step).decode()
    except PydanticSerializationError as exc:
        raise TypeError(
            f"Step {step.step_id} of transaction {transaction_id} cannot be stored as JSON: {exc}"
        ) from exc
