"""The auditor's view of visits (the national flow): every visit the POS registered (2201 / 2401, known by the
mdtrt_id in its outcome) ends settled, cancelled (2202, or closed by the bureau's 3201 sweep as abandoned) or
is reported as open; none is left half-settled at the bureau."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .run.observations import RunData


def check(data: "RunData", bureau: dict[str, Any] | None) -> tuple[list[str], dict[str, Any]]:
    """(problems, figures) from the run's outcomes and the bureau's G199 taken after the 3201 sweep."""
    ours: dict[str, str] = {}
    for o in data.observations:
        if o.outcome is not None and o.outcome.mdtrt_id:
            ours[o.outcome.mdtrt_id] = o.outcome.status
    figures: dict[str, Any] = {"registered": len(ours),
                               "settled": sum(1 for s in ours.values() if s == "settled"),
                               "abandoned": sum(1 for s in ours.values() if s == "abandoned"),
                               "ended_otherwise": sum(1 for s in ours.values()
                                                      if s not in ("settled", "abandoned"))}
    problems: list[str] = []
    if bureau is None:
        return ["no bureau audit (G199) to check the visits against"], figures
    visits = bureau.get("visits", {})
    states: dict[str, int] = visits.get("states", {})
    open_ids = {v["mdtrt_id"] for v in visits.get("open", []) if v.get("state") != "settling"}
    figures["open_at_end"] = len(open_ids & set(ours))
    figures["bureau_states"] = dict(sorted(states.items()))
    stuck = [v for v in visits.get("open", []) if v.get("state") == "settling"]
    if stuck:
        problems.append(f"{len(stuck)} visits still being settled at the bureau (e.g. "
                        f"{data.mapper.unmap_text(stuck[0]['mdtrt_id'])})")
    for mdtrt_id, status in sorted(ours.items()):
        if status == "settled" and mdtrt_id in open_ids:
            problems.append(f"visit {mdtrt_id}: settled at the POS, still open at the bureau")
    # Our own namespace: every visit the POS learned of is at the bureau. The bureau may have more: a 2201 whose
    # answer the POS gave up on (its visit ended refused E_TIMEOUT) is still registered there, reported open.
    figures["unknown_to_pos"] = max(0, sum(states.values()) - len(ours)) if not data.mapper.tag else None
    if not data.mapper.tag and sum(states.values()) < len(ours):
        problems.append(f"the bureau has {sum(states.values())} visits, the POS registered {len(ours)}")
    return problems, figures
