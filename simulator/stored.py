"""A visit outcome as the runner keeps it after the export has written it: a few fields at hand and the rest
as compressed JSON (about 0.6 kB instead of 6.5 kB for the pydantic model), so that a run of 100,000 families
fits in memory. Reads like a VisitOutcome: `.status`, `.infcode`, `.err_code`, `.visit_id`, `.cmd` directly;
`.setlinfo` (the model) and any other field decode on demand; `setlinfo_dict()` gives the JSON dict."""
from __future__ import annotations

import json
import zlib
from typing import Any

from contracts.pos import VisitOutcome


class StoredOutcome:
    __slots__ = ("visit_id", "cmd", "status", "infcode", "err_code", "_blob", "_has_setl")

    def __init__(self, outcome: VisitOutcome):
        self.visit_id = outcome.visit_id
        self.cmd = outcome.cmd
        self.status = outcome.status
        self.infcode = outcome.infcode
        self.err_code = outcome.err_code
        self._has_setl = outcome.setlinfo is not None
        # presettle (the pre-settlement's split) is not kept: nothing after the run reads it.
        self._blob = zlib.compress(outcome.model_dump_json(exclude={"presettle"}).encode(), 6)

    def full(self) -> VisitOutcome:
        return VisitOutcome.model_validate_json(zlib.decompress(self._blob))

    def setlinfo_dict(self) -> dict[str, Any] | None:
        if not self._has_setl:
            return None
        return json.loads(zlib.decompress(self._blob))["setlinfo"]  # type: ignore[no-any-return]

    @property
    def setlinfo(self) -> Any:
        return self.full().setlinfo if self._has_setl else None

    def __getattr__(self, name: str) -> Any:  # err_msg, fixmedins_code, psn_no, msgid, biz_time, ...
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.full(), name)

    def model_dump(self, **kwargs: Any) -> dict[str, Any]:
        return self.full().model_dump(**kwargs)
