"""Money on the wire: a JSON number as the national platform sends it (数值型 16,2), read straight to
Decimal (contracts.wire.loads, never through a float), or gongji's own string with two decimals ("12.30").

At most two decimal places; a Python float is refused outright (binary floats cannot hold fen exactly, and a
float here means the JSON was parsed without parse_float=Decimal). Storage uses integer fen; `to_fen` /
`from_fen` are the only conversions.
"""
from __future__ import annotations

import re
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

_MONEY_RE = re.compile(r"^-?[0-9]{1,12}\.[0-9]{2}$")
CENT = Decimal("0.01")
# The one limit of every hop: the largest amount the wire format carries (12 digits of yuan). A balance or an
# amount that would go beyond it is refused where it would arise, before any money moves.
MAX_AMOUNT = Decimal("999999999999.99")
MAX_FEN = 99_999_999_999_999


def _parse_money(value: Any) -> Decimal:
    if isinstance(value, bool) or isinstance(value, float):
        raise ValueError("money must be a string with exactly 2 decimals, e.g. \"12.30\" (float refused)")
    if isinstance(value, int):
        value = Decimal(value)
    if isinstance(value, Decimal):
        if not value.is_finite() or value.as_tuple().exponent < -2:  # type: ignore[operator]
            raise ValueError(f"money has at most 2 decimal places (数值型 16,2), got {value}")
        if abs(value) > MAX_AMOUNT:
            raise ValueError(f"money beyond {MAX_AMOUNT} does not fit the wire format")
        return value.quantize(CENT)
    if isinstance(value, str):
        if not _MONEY_RE.fullmatch(value):
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


def line_total(pric: Decimal, cnt: Decimal | str) -> Decimal:
    """A line's det_item_fee_sumamt: pric x cnt rounded half-up to the fen (12.25 x 0.5 = 6.13, not 6.12).
    The one helper every builder of fee lines uses (runner, settle CLI, demo, generator)."""
    return from_fen(round_fen(Decimal(pric) * Decimal(cnt) * 100))


def line_total_problem(total: Decimal, pric: Decimal, cnt: Decimal) -> str | None:
    """None if det_item_fee_sumamt is pric x cnt rounded to the fen in some direction (HIS round half-up,
    half-even or down): exactly the product when it has two places, else one of the two fen around it. A
    fen more on a line that needs no rounding is refused (500 lines, 5.00 more on a bill)."""
    exact = Decimal(pric) * Decimal(cnt)
    low, high = exact.quantize(CENT, ROUND_FLOOR), exact.quantize(CENT, ROUND_CEILING)
    if low <= total <= high:
        return None
    shown = f"{low}" if low == high else f"{low} or {high}"
    return f"det_item_fee_sumamt {total} != pric x cnt ({exact.normalize():f}, to the fen {shown})"


def _parse_price(value: Any) -> Decimal:
    """A unit price (单价 数值型 16,6): a JSON number, an int or a decimal string; at most 6 places."""
    if isinstance(value, (bool, float)):
        raise ValueError("pric must be a JSON number read exactly or a decimal string (float refused)")
    if isinstance(value, int):
        value = Decimal(value)
    elif isinstance(value, str):
        if not re.fullmatch(r"-?[0-9]{1,12}(\.[0-9]{1,6})?", value):
            raise ValueError(f"pric must look like \"12.30\" (at most 6 decimals), got {value!r}")
        value = Decimal(value)
    if not isinstance(value, Decimal) or not value.is_finite():
        raise ValueError("pric must be a number")
    if value.as_tuple().exponent < -6:  # type: ignore[operator]
        raise ValueError(f"pric has at most 6 decimal places (数值型 16,6), got {value}")
    if abs(value) >= Decimal("1e12"):
        raise ValueError("pric is absurd")
    return value


Price = Annotated[
    Decimal,
    BeforeValidator(_parse_price),
    PlainSerializer(lambda d: format(d, "f"), return_type=str),
    # What _parse_price takes: the national interface's JSON number, or a decimal string (published schemas).
    WithJsonSchema({"anyOf": [{"type": "number"}, {"type": "string", "pattern": r"^-?[0-9]{1,12}(\.[0-9]{1,6})?$"}],
                    "description": "unit price 单价 (数值型 16,6)"}),
]
