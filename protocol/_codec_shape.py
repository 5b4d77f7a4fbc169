"""What a decode of a registered type may allocate, worked out from its schema.

Theory of operation
-------------------
msgpack builds the whole value before the codec checks it against the schema, so a
body of ``size`` bytes must be bounded *before* msgpack runs: its per-object limits
(array, map, string and byte-string lengths) and the number of containers the
whole body may hold. Both follow from the schema alone. A fixed tree (no sequence,
no map) holds a known number of arrays; otherwise every container is paid for by
the bytes of the struct instance that owns it, so the densest instance (containers
per byte) bounds the containers of any legitimate body of ``size`` bytes.
:func:`shape_of` computes those facts once, when a type is registered.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Mapping
from typing import Any

__all__ = ["WIRE_ITEM", "DecodeLimits", "Schemas", "Shape", "shape_of"]

#: A class attribute naming the item struct of a sequence type that is held compactly
#: in memory but travels (and is shaped here) as ``tuple[item, ...]``
WIRE_ITEM = "__wire_item__"

#: (largest fixed arity, min element size of each variable sequence, min entry size
#: of each map, has str, has bytes, densest (containers, bytes))
Shape = tuple[int, tuple[int, ...], tuple[int, ...], bool, bool, tuple[int, int]]
#: registered type -> its schema, whose first item is the field names
Schemas = Mapping[type[Any], tuple[Any, ...]]


@dataclasses.dataclass(frozen=True, slots=True)
class DecodeLimits:
    """What one decode of a value of some type may allocate, from its schema.

    ``max_array_len`` / ``max_map_len`` / ``max_str_len`` / ``max_bin_len`` /
    ``max_ext_len`` are msgpack's per-object limits for a body of ``size`` bytes;
    ``max_containers`` bounds the arrays and maps of the whole body together (a
    legitimate value cannot hold more: every container is paid for by the bytes of
    the struct that owns it).
    """

    size: int
    max_array_len: int
    max_map_len: int
    max_str_len: int
    max_bin_len: int
    max_containers: int




def _wire(tp: Any) -> Any:
    """``tp`` as it travels: a packed sequence type is its ``tuple[item, ...]``."""
    item = getattr(tp, WIRE_ITEM, None) if isinstance(tp, type) else None
    return tp if item is None else tuple[item, ...]  # type: ignore[valid-type]


def _hints(tp: type[Any]) -> dict[str, Any]:
    return {k: _wire(v) for k, v in typing.get_type_hints(tp).items()}


def _min_size(tp: Any, schema: Schemas) -> int:
    """The fewest msgpack bytes a valid value of ``tp`` can take."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if isinstance(tp, type) and tp in schema:
        hints = _hints(tp)
        names = schema[tp][0][:schema[tp][4]]   # appended fields may be left off
        return (1 if len(names) < 16 else 3) + sum(_min_size(hints[n], schema) for n in names)
    if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        return (1 if len(args) < 16 else 3) + sum(_min_size(a, schema) for a in args)
    if tp is bytes:
        return 2
    return 1     # nil, bool, int, float (an int is accepted), str, enum, x|None, seq, map


def _own(tp: Any, schema: Schemas, upto: int | None = None) -> tuple[int, int]:
    """(containers, bytes) a struct or fixed tuple owns at least: itself and its direct
    sequence / map fields, against its header and its fields' smallest encodings
    (nested structs and fixed tuples are instances of their own). ``upto``: a struct
    encoded with only its first ``upto`` fields (appended ones left off)."""
    args = typing.get_args(tp)
    if isinstance(tp, type) and tp in schema:
        hints = _hints(tp)
        parts = [hints[n] for n in schema[tp][0][:upto]]
    else:
        parts = list(args)
    containers, size = 1, (1 if len(parts) < 16 else 3)
    for p in parts:
        o, a = typing.get_origin(p), typing.get_args(p)
        nested = (isinstance(p, type) and p in schema) or (
            o is tuple and not (len(a) == 2 and a[1] is Ellipsis))
        if nested:
            continue           # counted as an instance of its own
        if o is dict or (o is tuple and len(a) == 2 and a[1] is Ellipsis):
            containers += 1
        size += _min_size(p, schema)
    return containers, size


def shape_of(cls: type[Any], schema: Schemas) -> Shape:
    """The facts the codec's ``decode_limits`` needs about ``cls``'s schema, computed
    once when ``cls`` is registered (the codec keeps it in its schema)."""
    fixed = 3                            # the envelope [version, type, fields]
    seqs: list[int] = []
    maps: list[int] = []
    flags = {"str": False, "bytes": False}
    dense = (0, 1)                       # (containers, bytes) of the densest instance
    seen: set[Any] = set()

    def denser(c: int, b: int) -> None:
        nonlocal dense
        if c * dense[1] > dense[0] * b:
            dense = (c, b)

    def walk(tp: Any) -> None:
        nonlocal fixed
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if tp is str:
            flags["str"] = True
        elif tp is bytes:
            flags["bytes"] = True
        elif isinstance(tp, type) and issubclass(tp, enum.Enum):
            for member in tp:
                walk(type(member.value))
        elif isinstance(tp, type) and tp in schema:
            if tp in seen:
                return
            seen.add(tp)
            hints = _hints(tp)
            names = schema[tp][0]
            fixed = max(fixed, len(names))
            for upto in range(schema[tp][4], len(names) + 1):   # each encodable length
                denser(*_own(tp, schema, upto))
            for n in names:
                walk(hints[n])
        elif origin in (typing.Union, types.UnionType):
            for a in args:
                walk(a)
        elif origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            seqs.append(_min_size(args[0], schema))
            _repeatable(args[0])
            walk(args[0])
        elif origin is tuple:
            fixed = max(fixed, len(args))
            denser(*_own(tp, schema))
            for a in args:
                walk(a)
        elif origin is dict:
            maps.append(_min_size(args[0], schema) + _min_size(args[1], schema))
            _repeatable(args[1])
            walk(args[0])
            walk(args[1])

    def _repeatable(tp: Any) -> None:
        # a sequence or map that is itself an element owns only its header
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is dict or (origin is tuple and len(args) == 2 and args[1] is Ellipsis):
            denser(1, 1)

    walk(cls)
    if not seqs and not maps:            # a fixed tree: count its containers exactly
        dense = (-_tree(cls, schema), 0)
    return (fixed, tuple(seqs), tuple(maps), flags["str"], flags["bytes"], dense)


def _tree(tp: Any, schema: Schemas) -> int:
    """Arrays in a value of ``tp``, which holds no sequence or map, at most."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if isinstance(tp, type) and tp in schema:
        hints = _hints(tp)
        return 1 + sum(_tree(hints[n], schema) for n in schema[tp][0])
    if origin in (typing.Union, types.UnionType):
        return max(_tree(a, schema) for a in args)
    if origin is tuple:
        return 1 + sum(_tree(a, schema) for a in args)
    return 0
