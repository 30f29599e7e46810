"""Conformance findings about a client (a HIS or POS under test) that talks to gongji through the HTTP gateway.

Published on the events exchange with routing key `conformance.<fixmedins_code>` (the paasid when the
envelope could not be read); `gongji observe` lists them in its report. A finding says what the client did
wrong by the national rules; it never changes what the bureau does with the request.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import Strict

FindingKind = Literal[
    "signature_refused",         # x-tif headers missing, wrong, expired, or a nonce reused
    "malformed_envelope",        # not JSON / not the national envelope
    "malformed_msgid",           # not 12 fixmedins_code + 14 yyyyMMddHHmmss + 4 sequence
    "float_money",               # an amount sent as a JSON number instead of "12.30"
    "sign_no_missing",           # no or an unknown sign_no: 9001 first
    "sign_no_expired",           # a sign_no of another business day
    "settle_without_presettle",  # a settle with no pre-settle of the same bill before it
    "reverse_unknown_setl_id",   # a reversal of a setl_id the bureau does not know
    "missing_2601",              # a settle the client gave up waiting for, and no 2601 冲正 followed
]


class ConformanceFinding(Strict):
    kind: FindingKind
    fixmedins_code: str = Field(max_length=64)
    msgid: str = Field(default="", max_length=128)
    infno: str = Field(default="", max_length=16)
    detail: str = Field(max_length=1000)
    at: str  # wall-clock time the gateway saw it (ISO 8601, UTC): transport time, not business time
