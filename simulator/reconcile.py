"""Bureau against accounts, item by item by setl_id (like 3202 对明细账): every settlement the bureau counts
was paid by the accounts service with the same amounts, every payment has its settlement, and every undone
settlement was refunded. Both sides' detail comes from G199 scope=items."""
from __future__ import annotations

from typing import Any, Awaitable, Callable

# bureau state → the accounts payment state that goes with it; None: no payment at all
AGREE: dict[str, set[str | None]] = {
    "settled": {"paid"}, "reversed": {"refunded"}, "compensated": {"refunded", None}, "failed": {None},
    # still in flight: either side of the hop is fine
    "pending": {None, "paid"}, "reversing": {"paid", "refunded"}, "compensating": {"paid", "refunded"},
}

Call = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]  # G199 input → its output


async def fetch_items(call: Call, regions: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Every page of one side's items."""
    items: dict[str, dict[str, Any]] = {}
    after = ""
    while True:
        out = await call({"scope": "items", "after": after, "regions": regions or []})
        items.update(out["items"])
        if not out.get("next"):
            return items
        after = out["next"]


def reconcile(bureau: dict[str, dict[str, Any]], accounts: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The differences, one per setl_id, each with both sides and what is wrong."""
    out = []
    for setl_id in sorted(set(bureau) | set(accounts)):
        b, a = bureau.get(setl_id), accounts.get(setl_id)
        why = None
        if b is None:
            why = f"the accounts service has a payment ({a['state']}) the bureau has no settlement for"  # type: ignore
        elif (a["state"] if a else None) not in AGREE.get(b["state"], set()):
            why = (f"the bureau says {b['state']}, the accounts service "
                   + (f"says {a['state']}" if a else "has no payment"))
        elif b["state"] == "settled" and a is not None:
            differ = [k for k in ("medfee_fen", "taken_fen", "cash_fen") if b.get(k) != a.get(k)]
            if differ:
                why = "amounts differ: " + ", ".join(f"{k} bureau {b.get(k)} vs accounts {a.get(k)}" for k in differ)
        if why:
            out.append({"setl_id": setl_id, "problem": why, "bureau": b, "accounts": a})
    return out
