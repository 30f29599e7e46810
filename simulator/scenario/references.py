"""References to earlier results in a scenario (`${step.field}`): finding and substituting them."""
from __future__ import annotations

import re
from typing import Any

REF = re.compile(r"\$\{([A-Za-z0-9_.-]+?)\.([A-Za-z0-9_]+)\}")


def references(value: Any) -> list[tuple[str, str]]:
    """The ${step.field} references inside a value (strings, lists, dicts)."""
    if isinstance(value, str):
        return REF.findall(value)
    if isinstance(value, dict):
        return [r for v in value.values() for r in references(v)]
    if isinstance(value, list):
        return [r for v in value for r in references(v)]
    return []


def substitute(value: Any, results: dict[str, dict[str, Any]]) -> Any:
    """Replace ${step.field} by that step's result field. A string that is exactly one reference takes the
    value as it is (a number stays a number)."""
    if isinstance(value, str):
        whole = REF.fullmatch(value)
        if whole:
            return _lookup(results, whole.group(1), whole.group(2))
        return REF.sub(lambda m: str(_lookup(results, m.group(1), m.group(2))), value)
    if isinstance(value, dict):
        return {k: substitute(v, results) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, results) for v in value]
    return value


class UnresolvedReference(Exception):
    pass


def _lookup(results: dict[str, dict[str, Any]], step: str, fieldname: str) -> Any:
    if step not in results:
        raise UnresolvedReference(f"${{{step}.{fieldname}}}: no result of a step or binding named {step} (yet)")
    if fieldname not in results[step]:
        raise UnresolvedReference(f"${{{step}.{fieldname}}}: {step} has no field {fieldname} "
                                  f"(it has {', '.join(sorted(results[step])) or 'nothing'})")
    return results[step][fieldname]
