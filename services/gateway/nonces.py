"""Nonces seen within the signature's time window, to refuse a replayed call.

In memory, with a time-to-live: a nonce only needs remembering while its timestamp is still acceptable
(contracts.credentials.MAX_SKEW_S either side of now), so a map that forgets after 2 × that window is
complete for one gateway process and costs no disk write on the hot path. What it does not cover: a
replay sent to a *restarted* gateway within the window, or to another gateway replica; a deployment that
runs replicas would put this map in a shared store (e.g. SQLite on a shared volume, or Redis).
"""
from __future__ import annotations

import time
from collections import OrderedDict


class NonceCache:
    def __init__(self, ttl_s: float, max_entries: int = 1_000_000):
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()  # (paasid, nonce) → expiry

    def _purge(self, now: float) -> None:
        while self._seen:
            key, expiry = next(iter(self._seen.items()))
            if expiry > now and len(self._seen) <= self.max_entries:
                break
            self._seen.popitem(last=False)

    def first_use(self, paasid: str, nonce: str, now: float | None = None) -> bool:
        """True the first time (and remembers it); False for a nonce this paasid already used."""
        now = time.time() if now is None else now
        self._purge(now)
        key = (paasid, nonce)
        if key in self._seen:
            return False
        self._seen[key] = now + self.ttl_s  # insertion order is expiry order: one ttl for all
        return True
