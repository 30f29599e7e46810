"""Sums over what a run observed, shared by the runner (final expectations), the report and compare, so that
none of them imports another for them (no import circle)."""
from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING

from contracts.money import to_fen

from .scenario.model import TOTAL_FIELDS

if TYPE_CHECKING:
    from .run.observations import Obs


def totals(observations: "list[Obs]") -> dict[str, int]:
    """Net fen of every settled or reversed outcome (a reversal carries negated amounts)."""
    out = {f: 0 for f in TOTAL_FIELDS}
    for o in observations:
        s = o.setlinfo
        if s is None or o.outcome is None or o.outcome.status not in ("settled", "reversed"):
            continue
        for f in TOTAL_FIELDS:
            out[f] += to_fen(Decimal(s[f]))
    return out
