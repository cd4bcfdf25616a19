"""``record``: a frozen, slotted dataclass whose ``__init__`` costs a fraction as much.

A frozen dataclass's generated ``__init__`` assigns each field through ``object.__setattr__``,
several times slower than a mutable one's (bench/README.md). ``record``'s ``__init__`` lends the
new instance, for the length of the assignments, the class of a mutable twin with the same
slots (``__class__`` assignment between classes of one layout), so each field is stored as a
mutable slotted object's attribute, then gives it its own class back: the instances stay
exactly as immutable (``__setattr__`` still raises). Where the twin cannot be made (a record
built on another slotted class), each slot's own descriptor is called instead, which already
halves the frozen cost. The client and the CA each build some twenty of these per enrollment
(headers, bodies, statuses, events), so the difference is worth a decorator; tests/test_records.py
holds both to ``dataclass(frozen=True, slots=True)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar, dataclass_transform

T = TypeVar("T")


@dataclass_transform(frozen_default=True)
def record(cls: type[T]) -> type[T]:
    """``@dataclass(frozen=True, slots=True)`` with a faster ``__init__`` of the same signature."""
    cls = dataclasses.dataclass(frozen=True, slots=True)(cls)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    if any(f.kw_only for f in fields):
        return cls  # shapes the generated code below does not cover keep dataclass's own
    twin = _mutable_twin(cls)
    namespace: dict[str, Any] = {"_MISSING": dataclasses.MISSING, "_twin": twin, "_cls": cls,
                                 "_lend": object.__setattr__}
    params, values = [], []  # (field name, expression of its value)
    for f in fields:
        namespace[f"_set_{f.name}"] = cls.__dict__[f.name].__set__
        if not f.init:  # left to __post_init__, unless it has a default
            if f.default is not dataclasses.MISSING:
                namespace[f"_default_{f.name}"] = f.default
                values.append((f.name, f"_default_{f.name}"))
            elif f.default_factory is not dataclasses.MISSING:
                namespace[f"_factory_{f.name}"] = f.default_factory
                values.append((f.name, f"_factory_{f.name}()"))
        elif f.default is not dataclasses.MISSING:
            namespace[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
            values.append((f.name, f.name))
        elif f.default_factory is not dataclasses.MISSING:
            namespace[f"_factory_{f.name}"] = f.default_factory
            params.append(f"{f.name}=_MISSING")
            values.append((f.name, f"_factory_{f.name}() if {f.name} is _MISSING else {f.name}"))
        else:
            params.append(f.name)
            values.append((f.name, f.name))
    if not values and not hasattr(cls, "__post_init__"):
        return cls
    by_descriptor = [f"_set_{name}(self, {value})" for name, value in values]
    if twin is not None and values:  # a subclass's instance (another layout) takes the descriptors
        body = ["if type(self) is _cls:", "    _lend(self, '__class__', _twin)"]
        body += [f"    self.{name} = {value}" for name, value in values]
        body += ["    self.__class__ = _cls", "else:"] + [f"    {line}" for line in by_descriptor]
    else:
        body = by_descriptor
    if hasattr(cls, "__post_init__"):
        body.append("self.__post_init__()")
    source = f"def __init__(self, {', '.join(params)}) -> None:\n" + "\n".join(f"    {line}" for line in body)
    exec(source, namespace)  # noqa: S102 - code built from the class's own field names
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = cls.__init__.__doc__
    cls.__init__ = init  # type: ignore[method-assign]  # replacing the generated __init__ is the point
    return cls


def _mutable_twin(cls: type) -> type | None:
    """A plain class with ``cls``'s slots that instances of ``cls`` may wear while their fields
    are stored, or None where ``__class__`` assignment between the two is refused."""
    if cls.__bases__ != (object,):
        return None
    twin = type(f"_{cls.__name__}Fields", (), {"__slots__": cls.__slots__})  # type: ignore[attr-defined]
    probe: object = object.__new__(cls)
    try:
        object.__setattr__(probe, "__class__", twin)
        probe.__class__ = cls
    except TypeError:
        return None
    return twin
