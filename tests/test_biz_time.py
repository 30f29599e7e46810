"""Business time read and written without strptime/strftime on the hot path (issue 11): the same values and
the same refusals as `datetime.strptime(value, "%Y-%m-%d %H:%M:%S")` in Asia/Shanghai."""
from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest

from contracts.base import SHANGHAI, TIME_FORMAT, _parse_biz_time, format_biz_time


def reference(value: str) -> datetime:
    return datetime.strptime(value, TIME_FORMAT).replace(tzinfo=SHANGHAI)


def test_canonical_times_read_and_write_as_strptime_and_strftime_do() -> None:
    rng = random.Random(11)
    for _ in range(20000):
        t = datetime(1900, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=rng.randrange(0, 250 * 365 * 86400))
        for value in (t, t.astimezone(SHANGHAI)):
            assert format_biz_time(value) == value.astimezone(SHANGHAI).strftime(TIME_FORMAT)
        text = format_biz_time(t)
        assert _parse_biz_time(text) == reference(text)
        assert _parse_biz_time(text).tzinfo is SHANGHAI


@pytest.mark.parametrize("value", ["2026-02-30 10:00:00", "2026-13-01 10:00:00", "2026-01-01 24:00:00",
                                   "2026-01-01T10:00:00", "+026-01-01 10:00:00", "2026-01-01 10:00", ""])
def test_what_strptime_refuses_is_refused(value: str) -> None:
    with pytest.raises(ValueError):
        reference(value)
    with pytest.raises(ValueError):
        _parse_biz_time(value)


@pytest.mark.parametrize("value", ["2026-1-5 9:03:00", "２０２６-01-01 10:00:00"])
def test_other_forms_strptime_takes_still_read_the_same(value: str) -> None:
    assert _parse_biz_time(value) == reference(value)


def test_wire_dumps_writes_what_json_dumps_writes_for_plain_values() -> None:
    """contracts.wire.dumps writes strings, ints, booleans and null itself (issue 11): byte for byte what
    json.dumps(…, ensure_ascii=False) writes, str/int enums included; Decimals keep their places."""
    import enum
    import json
    from decimal import Decimal

    from contracts import wire

    class Kind(str, enum.Enum):
        A = "门诊\u2028"

    class Level(enum.IntEnum):
        X = 3

    values = [None, True, False, 0, -7, 10 ** 20, Level.X, Kind.A, "", 'q"\\\n\x00\u4e2d\U0001f600', "plain"]
    for v in values:
        assert wire.dumps(v) == json.dumps(v, ensure_ascii=False)
    obj = {"a": values, "门": {"n": Decimal("12.30"), "z": Decimal("-0.00")}, "t": (1, "x")}
    expected = json.dumps({"a": values, "门": {"n": 0, "z": 0}, "t": [1, "x"]}, ensure_ascii=False,
                          separators=(",", ":")).replace('"n":0', '"n":12.30').replace('"z":0', '"z":-0.00')
    assert wire.dumps(obj) == expected
