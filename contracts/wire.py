"""JSON as the national platform writes it: money and quantities are JSON numbers (数值型 16,2 / 16,6 / 16,4).

`loads` reads every JSON number with a fraction straight to Decimal (never through a binary float), and
`dumps` writes a Decimal back as a plain JSON number. Everything else is ordinary JSON.
"""
from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from pydantic_core import to_jsonable_python

_string = json.encoder.encode_basestring  # C-accelerated where available; json.dumps(str, ensure_ascii=False)


MAX_DEPTH = 64  # a national envelope nests 4–5 levels, a batch of them about 10


def loads(data: bytes | str) -> Any:
    """JSON → Python, fractions as Decimal. Deeper than MAX_DEPTH is refused as a JSONDecodeError, a bad message
    like any other: past it, code that walks the value (a hash, a serializer) would fail in ways of its own."""
    try:
        obj = json.loads(data, parse_float=Decimal)
    except RecursionError:
        raise json.JSONDecodeError(f"nested deeper than {MAX_DEPTH} levels", "", 0) from None
    opened = data.count(b"{") + data.count(b"[") if isinstance(data, (bytes, bytearray)) else data.count("{") + data.count("[")
    if opened > MAX_DEPTH and _deeper_than(obj, MAX_DEPTH):  # counting is cheap; walk only when it could be
        raise json.JSONDecodeError(f"nested deeper than {MAX_DEPTH} levels", "", 0)
    return obj


def _deeper_than(obj: Any, limit: int) -> bool:
    level, depth = [obj], 0
    while level:
        depth += 1
        if depth > limit:
            return True
        below: list[Any] = []
        for o in level:
            if isinstance(o, dict):
                below += [v for v in o.values() if isinstance(v, (dict, list))]
            elif isinstance(o, list):
                below += [v for v in o if isinstance(v, (dict, list))]
        level = below
    return False


def _number(d: Decimal) -> str:
    if not d.is_finite():
        raise ValueError(f"{d} is not a JSON number")
    text = format(d, "f")
    return "0" if text in ("-0", "") else text


def dumps(obj: Any) -> str:
    """Compact JSON; Decimal → a JSON number with exactly its own places (12.30 stays 12.30)."""
    # Strings, ints, booleans and null as json.dumps(…, ensure_ascii=False) writes them, without building an
    # encoder per value (this runs for every field of every national message).
    if isinstance(obj, str):
        return _string(obj)
    if isinstance(obj, Decimal):
        return _number(obj)
    if isinstance(obj, dict):
        return "{" + ",".join(f"{_string(str(k))}:{dumps(v)}" for k, v in obj.items()) + "}"
    if isinstance(obj, (list, tuple)):
        return "[" + ",".join(dumps(v) for v in obj) + "]"
    if obj is None:
        return "null"
    if isinstance(obj, bool):
        return "true" if obj else "false"
    if isinstance(obj, int):
        return int.__repr__(obj)
    if isinstance(obj, float):
        return json.dumps(obj, ensure_ascii=False)
    return json.dumps(to_jsonable_python(obj), ensure_ascii=False)  # dates, enums, models: as pydantic writes them
