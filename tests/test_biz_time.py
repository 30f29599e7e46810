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
