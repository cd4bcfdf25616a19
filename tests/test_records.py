"""``record`` must behave exactly like ``dataclass(frozen=True, slots=True)``, only faster."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from fleet.records import record


def _twins(body: dict[str, object], annotations: dict[str, object]) -> tuple[type, type]:
    """The same class made by ``record`` and by ``dataclass(frozen=True, slots=True)``."""
    made = []
    for decorate in (record, dataclasses.dataclass(frozen=True, slots=True)):
        namespace = dict(body, __annotations__=dict(annotations))
        made.append(decorate(type("Thing", (), namespace)))
    return made[0], made[1]


def test_same_signature_fields_equality_hash_and_repr() -> None:
    fast, plain = _twins(
        {"c": 3, "d": dataclasses.field(default=None, compare=False), "e": dataclasses.field(default_factory=list)},
        {"a": "int", "b": "bytes", "c": "int", "d": "object", "e": "list[int]"},
    )
    assert inspect.signature(fast.__init__).parameters.keys() == inspect.signature(plain.__init__).parameters.keys()
    for args, kwargs in [((1, b"x"), {}), ((1, b"x", 4), {"d": "ignored in eq"}), ((), {"a": 2, "b": b"", "e": [1]})]:
        f, p = fast(*args, **kwargs), plain(*args, **kwargs)
        assert [getattr(f, n.name) for n in dataclasses.fields(f)] == [getattr(p, n.name) for n in dataclasses.fields(p)]
        assert repr(f) == repr(p)
        assert dataclasses.astuple(f) == dataclasses.astuple(p)
    assert fast(1, b"x", d=1) == fast(1, b"x", d=2)  # compare=False honoured
    assert fast(1, b"x").e is not fast(1, b"x").e  # a fresh default per instance
    assert hash(fast(1, b"x", e=())) == hash(fast(1, b"x", e=()))


def test_instances_stay_immutable_and_slotted() -> None:
    fast, _ = _twins({}, {"a": "int"})
    thing = fast(1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        thing.a = 2  # type: ignore[misc]
    with pytest.raises((AttributeError, TypeError)):
        thing.other = 1  # type: ignore[attr-defined]
    assert not hasattr(thing, "__dict__")


def test_missing_and_unexpected_arguments_fail_like_dataclass() -> None:
    fast, plain = _twins({"b": 0}, {"a": "int", "b": "int"})
    for cls in (fast, plain):
        with pytest.raises(TypeError):
            cls()
        with pytest.raises(TypeError):
            cls(1, 2, 3)
        with pytest.raises(TypeError):
            cls(1, c=3)


def test_post_init_and_init_false_fields() -> None:
    def __post_init__(self) -> None:
        object.__setattr__(self, "double", self.a * 2)

    fast, plain = _twins(
        {"__post_init__": __post_init__, "double": dataclasses.field(init=False), "tag": dataclasses.field(init=False, default="t")},
        {"a": "int", "double": "int", "tag": "str"},
    )
    f, p = fast(21), plain(21)
    assert (f.double, f.tag) == (p.double, p.tag) == (42, "t")
    assert f == fast(21) and repr(f) == repr(p)


@record
class Point:
    a: int
    b: int = 0


def test_the_borrowed_class_never_shows_and_subclasses_replace_and_pickle_work() -> None:
    import pickle

    fast = Point
    thing = fast(1, 2)
    assert type(thing) is fast and isinstance(thing, fast)
    assert dataclasses.replace(thing, b=3) == fast(1, 3)
    assert pickle.loads(pickle.dumps(thing)) == thing

    class Sub(fast):  # type: ignore[misc, valid-type]  # another layout: takes the descriptor path
        pass

    sub = Sub(4, 5)
    assert type(sub) is Sub and (sub.a, sub.b) == (4, 5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        sub.a = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        fast("only a", "b", "and c")  # the class is never left borrowed by a failed call
    assert type(fast(1)) is fast
