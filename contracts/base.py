"""Shared pydantic configuration and field types for everything on the wire."""
from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer, StringConstraints

SHANGHAI = ZoneInfo("Asia/Shanghai")
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


class Strict(BaseModel):
    """Unknown fields are an error; nothing is coerced silently; models are immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _parse_biz_time(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=SHANGHAI)
    if not isinstance(value, str):
        raise ValueError("time must be a string 'yyyy-MM-dd HH:mm:ss' (Asia/Shanghai)")
    if len(value) == 19 and value[4] == value[7] == "-" and value[10] == " " and value[13] == value[16] == ":" \
            and (digits := value[0:4] + value[5:7] + value[8:10] + value[11:13] + value[14:16] + value[17:19]).isascii() \
            and digits.isdigit():
        # the canonical form, read without strptime (hot: every message carries times); anything else below
        try:
            return datetime(int(digits[0:4]), int(digits[4:6]), int(digits[6:8]), int(digits[8:10]),
                            int(digits[10:12]), int(digits[12:14]), tzinfo=SHANGHAI)
        except ValueError:
            pass
    try:
        return datetime.strptime(value, TIME_FORMAT).replace(tzinfo=SHANGHAI)
    except ValueError:
        raise ValueError(f"time must look like '2026-01-31 09:30:00' (Asia/Shanghai), got {value!r}") from None


def format_biz_time(value: datetime) -> str:
    v = value if value.tzinfo is SHANGHAI else value.astimezone(SHANGHAI)
    if v.year < 1000:
        return v.strftime(TIME_FORMAT)
    return f"{v.year:04d}-{v.month:02d}-{v.day:02d} {v.hour:02d}:{v.minute:02d}:{v.second:02d}"


# Business time as the national interface writes it: local Asia/Shanghai, no zone suffix.
BizTime = Annotated[datetime, BeforeValidator(_parse_biz_time), PlainSerializer(format_biz_time, return_type=str)]

Admdvs = Annotated[str, StringConstraints(pattern=r"^[0-9]{6}$")]
FixmedinsCode = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9]{12}$")]
PsnNo = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,30}$")]
MsgId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9]{12}[0-9]{14}[0-9]{4}$")]
ShortText = Annotated[str, StringConstraints(max_length=200)]


def _parse_ratio(value: Any) -> Decimal:
    if isinstance(value, float) or isinstance(value, bool):
        raise ValueError("ratio must be a decimal string like \"0.05\" (float refused)")
    if isinstance(value, int):
        value = str(value)
    if isinstance(value, str):
        if not _DECIMAL_RE.fullmatch(value):  # ASCII digits only: Decimal() also reads "1_0" and fullwidth digits
            raise ValueError(f"ratio must be a decimal string, got {value!r}")
        value = Decimal(value)
    if not isinstance(value, Decimal) or not value.is_finite() or not (0 <= value <= 1):
        raise ValueError("ratio must be between 0 and 1")
    if value.as_tuple().exponent < -4:
        raise ValueError("ratio has at most 4 decimal places")
    return value


Ratio = Annotated[Decimal, BeforeValidator(_parse_ratio), PlainSerializer(lambda d: str(d), return_type=str)]


_DECIMAL_RE = re.compile(r"^-?[0-9]{1,12}(\.[0-9]{1,12})?$")


def _parse_qty(value: Any) -> Decimal:
    if isinstance(value, float) or isinstance(value, bool):
        raise ValueError("cnt must be a decimal string or integer (float refused)")
    if isinstance(value, str) and not _DECIMAL_RE.fullmatch(value):  # "1_0" or fullwidth digits: Decimal() reads them
        raise ValueError(f"cnt must be a decimal string like \"2\" or \"0.5\", got {value!r}")
    try:
        dec = Decimal(str(value))
    except Exception:
        raise ValueError(f"cnt must be a number, got {value!r}") from None
    if not dec.is_finite() or dec <= 0 or dec > 100000 or dec.as_tuple().exponent < -4:
        raise ValueError("cnt must be > 0, at most 100000, with at most 4 decimals")
    return dec


Quantity = Annotated[Decimal, BeforeValidator(_parse_qty), PlainSerializer(lambda d: str(d), return_type=str)]
