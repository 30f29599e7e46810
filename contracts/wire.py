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


def loads(data: bytes | str) -> Any:
    return json.loads(data, parse_float=Decimal)


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
