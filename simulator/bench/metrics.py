"""Latency percentiles, slopes and the per-visit record the bench keeps."""
from __future__ import annotations

import statistics
from dataclasses import dataclass


def percentile(sorted_values: list[float], p: int) -> float:
    """The p-th percentile (1..99; statistics.quantiles, inclusive method, as `gongji run`'s latencies)."""
    if len(sorted_values) < 2:
        return sorted_values[0] if sorted_values else float("nan")
    return statistics.quantiles(sorted_values, n=100, method="inclusive")[p - 1]


def slope_per_min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, per minute; None for fewer than 3 points or one instant."""
    if len(points) < 3:
        return None
    try:
        fit = statistics.linear_regression([p[0] for p in points], [p[1] for p in points])
    except statistics.StatisticsError:  # every x the same
        return None
    return fit.slope * 60


@dataclass
class Record:
    t_send: float  # scheduled (open loop) or actual (closed loop) send time
    t_done: float
    status: str
    mulaid: bool
    round_trips: int = 0  # national transactions the visit took (the POS counts them; sign-in excluded)


def round_trips_per_settlement(settled: list[Record]) -> float:
    """The mean number of national round trips a settled visit of the mix took (2 for a pharmacy 2101 → 2102,
    5 for an outpatient 2201 → 2203 → 2204 → 2206 → 2207); 2 when nothing was counted."""
    counted = [r.round_trips for r in settled if r.round_trips > 0]
    return round(sum(counted) / len(counted), 3) if counted else 2.0
