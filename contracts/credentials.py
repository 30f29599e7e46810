"""Facility credentials of the national gateway: one truth for the HTTP gateway and the bureau's 9001 sign-in.

The national platform's gateway authenticates every call by four headers: `x-tif-paasid` (the facility's
account), `x-tif-timestamp` (Unix seconds), `x-tif-nonce` and `x-tif-signature` = SHA-256 hex of
timestamp + paasToken + nonce + timestamp (as public HIS client code computes it).

gongji derives each facility's paasToken from one secret (`GONGJI_PAAS_SECRET`; a documented local default),
so the bureau, the gateway and `gongji credentials` agree without a table to distribute:
    paas_token(paasid) = HMAC-SHA256(secret, paasid), first 32 hex digits.
The paasid is the facility's fixmedins_code. The timestamp is transport time (wall clock), like the POS's
冲正 deadline; business time stays in `inf_time`. Remembering nonces (to refuse a replay) is the caller's job.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from typing import Mapping

DEFAULT_SECRET = "gongji-local-paas-secret"  # local default only: set GONGJI_PAAS_SECRET for anything else
PAASID, TIMESTAMP, NONCE, SIGNATURE = "x-tif-paasid", "x-tif-timestamp", "x-tif-nonce", "x-tif-signature"
HEADERS = (PAASID, TIMESTAMP, NONCE, SIGNATURE)
MAX_SKEW_S = 300  # a signed call older (or newer) than this is refused

# refusal codes (also in contracts.errors.ErrorCode)
SIGNATURE_MISSING = "E_SIGNATURE_MISSING"
SIGNATURE_INVALID = "E_SIGNATURE_INVALID"
SIGNATURE_EXPIRED = "E_SIGNATURE_EXPIRED"
NONCE_REUSED = "E_NONCE_REUSED"


def secret_from_env() -> str:
    return os.environ.get("GONGJI_PAAS_SECRET") or DEFAULT_SECRET


def paas_token(paasid: str, secret: str | None = None) -> str:
    key = (secret or secret_from_env()).encode()
    return hmac.new(key, paasid.encode(), hashlib.sha256).hexdigest()[:32]


def signature(timestamp: str, token: str, nonce: str) -> str:
    return hashlib.sha256((timestamp + token + nonce + timestamp).encode()).hexdigest()


def sign(paasid: str, token: str, now: float | None = None, nonce: str | None = None) -> dict[str, str]:
    """The four headers a client sends."""
    ts = str(int(time.time() if now is None else now))
    nonce = nonce or secrets.token_hex(16)
    return {PAASID: paasid, TIMESTAMP: ts, NONCE: nonce, SIGNATURE: signature(ts, token, nonce)}


def check(headers: Mapping[str, str], now: float | None = None, secret: str | None = None,
          max_skew_s: int = MAX_SKEW_S) -> tuple[str | None, str]:
    """(refusal code or None, message). Header names are matched case-insensitively."""
    h = {str(k).lower(): str(v) for k, v in headers.items()}
    missing = [name for name in HEADERS if not h.get(name)]
    if missing:
        return SIGNATURE_MISSING, f"missing {', '.join(missing)}"
    try:
        ts = int(h[TIMESTAMP])
    except ValueError:
        return SIGNATURE_INVALID, f"{TIMESTAMP} is not Unix seconds: {h[TIMESTAMP]!r}"
    now = time.time() if now is None else now
    if abs(now - ts) > max_skew_s:
        return SIGNATURE_EXPIRED, f"{TIMESTAMP} {ts} is more than {max_skew_s} s from now"
    expected = signature(h[TIMESTAMP], paas_token(h[PAASID], secret), h[NONCE])
    if not hmac.compare_digest(expected, h[SIGNATURE].lower()):
        return SIGNATURE_INVALID, f"{SIGNATURE} does not match paasid {h[PAASID]}"
    return None, "ok"
