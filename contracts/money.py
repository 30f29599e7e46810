"""Money on the wire: a JSON string with exactly two decimal places ("12.30").

Floats are refused outright (binary floats cannot hold fen exactly) and so are
JSON numbers in general: a sender that wants to be understood writes "12.30".
Storage uses integer fen; `to_fen` / `from_fen` are the only conversions.
"""
from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

_MONEY_RE = re.compile(r"^-?\d{1,12}\.\d{2}$")
CENT = Decimal("0.01")
# The one limit of every hop: the largest amount the wire format carries (12 digits of yuan). A balance or an
# amount that would go beyond it is refused where it would arise, before any money moves.
MAX_AMOUNT = Decimal("999999999999.99")
MAX_FEN = 99_999_999_999_999


def _parse_money(value: Any) -> Decimal:
    if isinstance(value, bool) or isinstance(value, float):
        raise ValueError("money must be a string with exactly 2 decimals, e.g. \"12.30\" (float refused)")
    if isinstance(value, int):
        raise ValueError("money must be a string with exactly 2 decimals, e.g. \"12.00\" (bare number refused)")
    if isinstance(value, Decimal):
        if not value.is_finite() or value.as_tuple().exponent != -2:
            raise ValueError("money must have exactly 2 decimal places")
        if abs(value) > MAX_AMOUNT:
            raise ValueError(f"money beyond {MAX_AMOUNT} does not fit the wire format")
        return value
    if isinstance(value, str):
        if not _MONEY_RE.match(value):
            raise ValueError(f"money must look like \"12.30\" (exactly 2 decimals), got {value!r}")
        return Decimal(value)
    raise ValueError(f"money must be a string like \"12.30\", got {type(value).__name__}")


def _dump_money(value: Decimal) -> str:
    return f"{value:.2f}"


Money = Annotated[
    Decimal,
    BeforeValidator(_parse_money),
    PlainSerializer(_dump_money, return_type=str),
    WithJsonSchema({"type": "string", "pattern": _MONEY_RE.pattern}),
]


def to_fen(amount: Decimal) -> int:
    """Exact conversion; refuses anything that is not a whole number of fen."""
    fen = amount * 100
    if fen != fen.to_integral_value():
        raise ValueError(f"{amount} is not a whole number of fen")
    return int(fen)


def from_fen(fen: int) -> Decimal:
    return (Decimal(fen) / 100).quantize(CENT)


def yuan(text: str) -> Decimal:
    """Literal helper for code and tests: yuan("12.30")."""
    return _parse_money(text)


def round_fen(value: Decimal) -> int:
    """Round a fractional fen amount half-up to whole fen (the national rule for 分)."""
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))
