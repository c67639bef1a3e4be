"""`frozen`: PlayGate's value types (decisions, streams, requests, claims, audit events), immutable and cheap.

A frozen dataclass sets each field in its `__init__` through `object.__setattr__` (its own `__setattr__` refuses),
which costs about seven times a plain slotted dataclass's assignments: 1.4 against 0.2 µs for fourteen fields on
this machine, and the players' loop makes some ten such values a decision (a decision, its audit event, its stream,
the request, the quota, the caller's claims...). So a value type is frozen where it is checked and plain where it
runs: mypy (strict, part of `make test`) sees a frozen dataclass (`dataclass_transform(frozen_default=True)`) and
refuses any assignment to a field; at run time the class is a slotted dataclass with the field-wise hash a frozen
one has. The players' loop makes 6 to 9% more decisions a second so (docs/performance-log.md, 2026-12-04).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar, dataclass_transform

T = TypeVar("T")


@dataclass_transform(frozen_default=True)
def frozen(cls: type[T]) -> type[T]:
    """`cls` as a value type: a frozen dataclass with slots to the type checker, built without the frozen
    `__init__`'s cost. Equal values hash alike, as a frozen dataclass's do (a `__hash__` of its own stays)."""
    return dataclass(slots=True, unsafe_hash="__hash__" not in cls.__dict__)(cls)
