"""Scenario names → names on the wire: identity for a fresh stack, a per-run tag with --external."""
from __future__ import annotations

from typing import Any

SIM_FIXMEDINS = "GONGJISIM001"  # the fixmedins_code of the simulator's own admin messages


# ---- identities ---------------------------------------------------------------------------------------
class Mapper:
    """Scenario names → names on the wire. Identity for a fresh stack; with --external every person,
    facility and visit gets a per-run tag so that runs against long-lived workers never meet."""

    def __init__(self, tag: str | None = None):
        self.tag = tag
        self._fac: dict[str, str] = {}
        self._fac_back: dict[str, str] = {}
        self.client_code = SIM_FIXMEDINS if tag is None else f"GJ{tag}{'0' * (10 - len(tag))}"[:12]

    def add_facilities(self, codes: list[str]) -> None:
        for code in codes:
            if code in self._fac:
                continue
            mapped = code if self.tag is None else f"X{self.tag}{len(self._fac) + 1:06d}"
            self._fac[code], self._fac_back[mapped] = mapped, code

    def psn(self, psn_no: str) -> str:
        return psn_no if self.tag is None else f"{self.tag}-{psn_no}"

    def fac(self, code: str) -> str:
        return self._fac.get(code, code)

    def visit(self, name: str) -> str:
        return name if self.tag is None else f"{self.tag}-{name}"

    def unmap_text(self, text: str) -> str:
        if self.tag is None:
            return text
        text = text.replace(f"{self.tag}-", "")
        for mapped, code in self._fac_back.items():
            if mapped in text:
                text = text.replace(mapped, code)
        return text

    def unmap(self, obj: Any) -> Any:
        if self.tag is None:
            return obj
        if isinstance(obj, str):
            return self.unmap_text(obj)
        if isinstance(obj, dict):
            return {self.unmap_text(k) if isinstance(k, str) else k: self.unmap(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.unmap(v) for v in obj]
        return obj

    def map_values(self, obj: Any, people: set[str], facilities: set[str]) -> Any:
        """Admin inputs: any string that names a scenario person or facility is mapped."""
        if isinstance(obj, str):
            if obj in people:
                return self.psn(obj)
            if obj in facilities:
                return self.fac(obj)
            return obj
        if isinstance(obj, dict):
            return {k: self.map_values(v, people, facilities) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.map_values(v, people, facilities) for v in obj]
        return obj
