"""Where messages go. Every name lives under a namespace so that test runs never meet each other.

    <ns>.bureau    direct   key = insuplc_admdvs (参保地), or "registry" for broadcasts (9001 sign-in)
    <ns>.registry  direct   the bureau's registry transactions (G001/G002/G003, G199): key as above; only the
                            admin/simulator user may write here, and the bureau takes them from nowhere else
    <ns>.pay       direct   key = "pay": money movements, published by the bureau only (its own exchange, so
                            that broker permissions can say so)
    <ns>.accounts  direct   key = "admin": the accounts service's admin transactions
    <ns>.pos       direct   key = "command"
    <ns>.reply     topic    key = a requester's reply key (durable reply queues; no direct reply-to); topic so
                            that broker topic permissions bound who may bind which key (a client only client-…)
    <ns>.events    topic    outcome.<fixmedins_code>, balance.<psn_no>
    <ns>.dlx       fanout   → <ns>.dead (every work queue dead-letters here)
"""
from __future__ import annotations

from dataclasses import dataclass

REGISTRY_KEY = "registry"


@dataclass(frozen=True)
class Names:
    ns: str = "gongji"

    @property
    def bureau_exchange(self) -> str:
        return f"{self.ns}.bureau"

    def bureau_queue(self, regions: list[str] | None) -> str:
        return f"{self.ns}.bureau.{'-'.join(sorted(regions)) if regions else 'all'}"

    @property
    def registry_exchange(self) -> str:
        """The bureau's registry (G001/G002/G003) and audit (G199): writable by the admin/simulator user only."""
        return f"{self.ns}.registry"

    @property
    def accounts_exchange(self) -> str:
        """The accounts service's admin channel (G1xx)."""
        return f"{self.ns}.accounts"

    @property
    def pay_exchange(self) -> str:
        """Money movement requests to the accounts service; only the bureau may publish here."""
        return f"{self.ns}.pay"

    @property
    def accounts_pay_queue(self) -> str:
        return f"{self.ns}.accounts.pay"

    @property
    def accounts_admin_queue(self) -> str:
        return f"{self.ns}.accounts.admin"

    @property
    def pos_exchange(self) -> str:
        return f"{self.ns}.pos"

    @property
    def pos_command_queue(self) -> str:
        return f"{self.ns}.pos.commands"

    @property
    def reply_exchange(self) -> str:
        return f"{self.ns}.reply"

    def reply_queue(self, key: str) -> str:
        return f"{self.ns}.reply.{key}"

    @property
    def events_exchange(self) -> str:
        return f"{self.ns}.events"

    @property
    def events_archive_queue(self) -> str:
        return f"{self.ns}.events.archive"

    @property
    def dlx(self) -> str:
        return f"{self.ns}.dlx"

    @property
    def dead_queue(self) -> str:
        return f"{self.ns}.dead"
