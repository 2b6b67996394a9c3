"""Schemas compiled for the native Avro codec (``schemas/_avro.c``).

:func:`compile_schema` turns a schema, as JSON-decoded from its ``.avsc`` file, into the tree of
tuples the C walks (node shapes: the C file's header). It compiles what the event schemas use:
records, ``null``, ``boolean``, ``int``, ``long``, ``string``, ``bytes``, enums, arrays, maps,
unions of ``null`` and one other type, and ``timestamp-millis``. Anything else raises
:class:`Unsupported`, and :mod:`schemas.codec` keeps fastavro for that schema.

The codec gives the same bytes and the same values as fastavro (``tests/test_avro_native.py``
holds it to fastavro over generated records of every kept schema version), with two kinds of
difference, both refusals of what is a bug or damage:

- encoding refuses what fastavro coerces: a float, a bool or an out-of-range number in an
  ``int`` or ``long`` (fastavro truncates, counts or wraps it), a non-bool ``boolean`` (fastavro
  takes its truth), a value other than None for ``null``;
- decoding refuses what no Avro writer makes: a boolean octet other than 0 or 1, a number of
  more than ten octets, a negative enum or union index (fastavro indexes its list with it, and
  -1 reads as the last symbol or branch), an array or map block of -2**63 items (fastavro's
  negation overflows, and it reads the block as empty).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from schemas import _avro, events

Node = tuple[Any, ...]

_PRIMITIVES = {
    "null": (_avro.NULL,),
    "boolean": (_avro.BOOLEAN,),
    "int": (_avro.INT,),
    "long": (_avro.LONG,),
    "string": (_avro.STRING,),
    "bytes": (_avro.BYTES,),
}


class Unsupported(ValueError):
    """A schema the native codec does not compile (fastavro handles it)."""


def to_millis(value: object) -> int:
    """A datetime as fastavro encodes it into a timestamp-millis: an aware one as
    :func:`schemas.events.to_millis` does (rounded down to the millisecond), a naive one as
    local time (``time.mktime``), where :mod:`schemas.events` would take UTC: the codec's bytes
    must be fastavro's in any zone. Decoding is :func:`schemas.events.from_millis`, fastavro's
    ``EPOCH + timedelta``."""
    if not isinstance(value, datetime):
        raise TypeError(f"must be a datetime or an int, not {type(value).__name__}")
    if value.tzinfo is not None:
        return events.to_millis(value)
    return int(time.mktime(value.timetuple())) * 1000 + int(value.microsecond / 1000)


_TIMESTAMP = (_avro.TIMESTAMP, events.from_millis, to_millis)


def compile_schema(schema: Mapping[str, Any]) -> Node:
    """The program of a top-level record schema; :class:`Unsupported` for what it cannot do."""
    if schema.get("type") != "record":
        raise Unsupported("the top level must be a record")
    return _Compiler().node(schema, "")


class _Compiler:
    def __init__(self) -> None:
        self.named: dict[str, Node | None] = {}  # None while its definition is being compiled

    def node(self, schema: Any, namespace: str) -> Node:
        if isinstance(schema, str):
            if schema in _PRIMITIVES:
                return _PRIMITIVES[schema]
            return self.reference(schema, namespace)
        if isinstance(schema, list):
            return self.union(schema, namespace)
        if not isinstance(schema, Mapping):
            raise Unsupported(f"not a schema: {schema!r}")
        kind = schema.get("type")
        logical = schema.get("logicalType")
        if logical is not None:
            if logical == "timestamp-millis" and kind == "long":
                return _TIMESTAMP
            raise Unsupported(f"logical type {logical} of {kind}")
        if kind == "record":
            return self.record(schema, namespace)
        if kind == "enum":
            name = self.define(schema, namespace)
            symbols = tuple(str(s) for s in schema["symbols"])
            node: Node = (_avro.ENUM, symbols, {s: i for i, s in enumerate(symbols)})
            self.named[name] = node
            return node
        if kind == "array":
            item = self.node(schema["items"], namespace)
            if _min_size(item) == 0:  # a count could then claim items the record has no room for
                raise Unsupported("an array of items that can encode to no octets")
            return (_avro.ARRAY, item)
        if kind == "map":
            return (_avro.MAP, self.node(schema["values"], namespace))
        if isinstance(kind, str | list | Mapping):  # {"type": "string"}, {"type": {...}}
            return self.node(kind, namespace)
        raise Unsupported(f"type {kind!r}")

    def define(self, schema: Mapping[str, Any], namespace: str) -> str:
        name = str(schema["name"])
        space = schema.get("namespace", namespace)
        full = name if "." in name or not space else f"{space}.{name}"
        if full in self.named:
            raise Unsupported(f"{full} is defined twice")
        self.named[full] = None
        return full

    def reference(self, name: str, namespace: str) -> Node:
        for full in (f"{namespace}.{name}" if namespace and "." not in name else name, name):
            if full in self.named:
                node = self.named[full]
                if node is None:
                    raise Unsupported(f"{full} refers to itself")
                return node
        raise Unsupported(f"unknown type {name!r}")

    def union(self, branches: list[Any], namespace: str) -> Node:
        if len(branches) != 2 or branches.count("null") != 1:
            raise Unsupported("a union other than of null and one type")
        null_index = branches.index("null")
        return (_avro.OPTION, null_index, self.node(branches[1 - null_index], namespace))

    def record(self, schema: Mapping[str, Any], namespace: str) -> Node:
        full = self.define(schema, namespace)
        inner = full.rsplit(".", 1)[0] if "." in full else ""
        names: list[str] = []
        nodes: list[Node] = []
        defaults: list[tuple[Any] | None] = []
        for field in schema["fields"]:
            node = self.node(field["type"], inner)
            names.append(str(field["name"]))
            nodes.append(node)
            defaults.append(_default(field, node) if "default" in field else None)
        program: Node = (_avro.RECORD, tuple(names), tuple(nodes), tuple(defaults))
        self.named[full] = program
        return program


def _default(field: Mapping[str, Any], node: Node) -> tuple[Any]:
    """A field's default as the value the encoder writes (Avro: a union's is its first
    branch's); the JSON forms that fastavro would convert (bytes as text) are not compiled."""
    value = field["default"]
    if node[0] == _avro.OPTION and node[1] == 0 and value is None:
        return (None,)
    if node[0] in (_avro.STRING, _avro.ENUM, _avro.BOOLEAN, _avro.INT, _avro.LONG, _avro.TIMESTAMP):
        return (value,)
    if node[0] == _avro.ARRAY and value == []:
        return ((),)
    if node[0] == _avro.MAP and value == {}:
        return ({},)
    raise Unsupported(f"the default {value!r} of {field['name']}")


def _min_size(node: Node) -> int:
    """The fewest octets a value of ``node`` encodes to."""
    if node[0] == _avro.NULL:
        return 0
    if node[0] == _avro.RECORD:
        return sum(_min_size(n) for n in node[2])
    return 1
