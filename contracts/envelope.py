"""The national interface envelope (医疗保障信息平台 定点医药机构接口规范), as JSON over AMQP.

Every request carries `msgid`, the idempotency key: 12-char fixmedins_code + yyyyMMddHHmmss + 4-digit
sequence. The reply names it in `inf_refmsgid`. `err_code` is a gongji extension: a stable,
machine-readable reason next to the human `err_msg`.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import Field

from . import wire
from .base import Admdvs, BizTime, FixmedinsCode, MsgId, ShortText, Strict

INFVER = "V1.0"


class Request(Strict):
    infno: str = Field(pattern=r"^[0-9A-Z]{4}$")
    msgid: MsgId
    inf_time: BizTime
    fixmedins_code: FixmedinsCode
    insuplc_admdvs: Admdvs
    mdtrtarea_admvs: Admdvs
    opter: ShortText = "gongji"
    opter_type: Literal["1", "2", "3"] = "1"
    sign_no: ShortText = ""
    infver: ShortText = INFVER
    input: dict[str, Any]

    def content_hash(self) -> str:
        """What makes two messages with one msgid 'the same': everything but sign_no/opter."""
        core = self.model_dump(mode="json", exclude={"sign_no", "opter", "opter_type"})
        return hashlib.sha256(json.dumps(core, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class Reply(Strict):
    infcode: Literal[0, -1]
    inf_refmsgid: str
    err_code: str | None = None
    err_msg: str | None = None
    output: dict[str, Any] | None = None

    def model_dump_json(self, **kwargs: Any) -> str:  # type: ignore[override]
        """Decimals in `output` go out as JSON numbers, as the national platform answers (contracts.wire);
        outputs built from gongji's models (money as "12.30" strings) are unchanged."""
        if kwargs:
            return super().model_dump_json(**kwargs)
        return wire.dumps(self.model_dump())

    @classmethod
    def ok(cls, refmsgid: str, output: dict[str, Any]) -> "Reply":
        return cls(infcode=0, inf_refmsgid=refmsgid, output=output)

    @classmethod
    def fail(cls, refmsgid: str, err_code: str, err_msg: str) -> "Reply":
        return cls(infcode=-1, inf_refmsgid=refmsgid, err_code=err_code, err_msg=err_msg)


def make_msgid(fixmedins_code: str, stamp: str, seq: int) -> str:
    """stamp: yyyyMMddHHmmss of the (business) send time; seq: 0..9999."""
    if not (0 <= seq <= 9999):
        raise ValueError("msgid sequence is 4 digits")
    return f"{fixmedins_code}{stamp}{seq:04d}"
