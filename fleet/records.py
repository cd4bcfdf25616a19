"""``record``: a frozen, slotted dataclass whose ``__init__`` costs half as much.

A frozen dataclass's generated ``__init__`` assigns each field through ``object.__setattr__``,
several times slower than a mutable one's (bench/README.md). Calling each slot's
own descriptor does the same assignment in half the time, and the instances stay exactly as
immutable (``__setattr__`` still raises). The client and the CA each build some twenty of these
per enrollment (headers, bodies, statuses, events), so the difference is worth a decorator.
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
    namespace: dict[str, Any] = {"_MISSING": dataclasses.MISSING}
    params, body = [], []
    for f in fields:
        namespace[f"_set_{f.name}"] = cls.__dict__[f.name].__set__
        if not f.init:  # left to __post_init__, unless it has a default
            if f.default is not dataclasses.MISSING:
                namespace[f"_default_{f.name}"] = f.default
                body.append(f"    _set_{f.name}(self, _default_{f.name})")
            elif f.default_factory is not dataclasses.MISSING:
                namespace[f"_factory_{f.name}"] = f.default_factory
                body.append(f"    _set_{f.name}(self, _factory_{f.name}())")
        elif f.default is not dataclasses.MISSING:
            namespace[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
            body.append(f"    _set_{f.name}(self, {f.name})")
        elif f.default_factory is not dataclasses.MISSING:
            namespace[f"_factory_{f.name}"] = f.default_factory
            params.append(f"{f.name}=_MISSING")
            body.append(f"    _set_{f.name}(self, _factory_{f.name}() if {f.name} is _MISSING else {f.name})")
        else:
            params.append(f.name)
            body.append(f"    _set_{f.name}(self, {f.name})")
    if hasattr(cls, "__post_init__"):
        body.append("    self.__post_init__()")
    if not body:
        return cls
    source = f"def __init__(self, {', '.join(params)}) -> None:\n" + "\n".join(body)
    exec(source, namespace)  # noqa: S102 - code built from the class's own field names
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = cls.__init__.__doc__
    cls.__init__ = init  # type: ignore[method-assign]  # replacing the generated __init__ is the point
    return cls
