"""The accounts service's repositories: every query its handlers (service.py, lifecycle.py) need, in portable
SQL (services/shared/sql.py), behind one unit of work. The schema and the ledger's helpers stay in store.py.

Rows come back as stored (readable by column name). A SELECT of rows the transaction goes on to change takes
them `for_update`; money moves lock the people concerned in psn_no order first (store.lock_people).
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

from services.shared.sql import Tx, for_update
from services.shared.uow import Repository, UnitOfWork

from . import store as db


class People(Repository):
    def get(self, psn_no: str) -> Any:
        return db.get_person(self._tx, psn_no)

    def put(self, psn_no: str, region: str, insutype: str, evoucher_active: bool) -> None:
        self._tx.execute("INSERT INTO people (psn_no, insuplc_admdvs, insutype, evoucher_active) VALUES (?,?,?,?) "
                         "ON CONFLICT (psn_no) DO UPDATE SET insuplc_admdvs=excluded.insuplc_admdvs, "
                         "insutype=excluded.insutype, evoucher_active=excluded.evoucher_active",
                         (psn_no, region, insutype, int(evoucher_active)))

    def put_holder(self, psn_no: str, region: str, insutype: str, evoucher_active: bool) -> None:
        """A card holder without an account: an existing person keeps its region and insutype."""
        self._tx.execute("INSERT INTO people (psn_no, insuplc_admdvs, insutype, evoucher_active) VALUES (?,?,?,?) "
                         "ON CONFLICT (psn_no) DO UPDATE SET evoucher_active=excluded.evoucher_active",
                         (psn_no, region, insutype, int(evoucher_active)))

    def wallet(self, psn_no: str) -> int:
        return db.wallet(self._tx, psn_no)


class Accounts(Repository):
    def get(self, psn_no: str) -> Any:
        return db.get_account(self._tx, psn_no)

    def lock(self, psn_nos: Iterable[str]) -> None:
        """Take these people's rows now, in psn_no order, before anything reads or moves their money."""
        db.lock_people(self._tx, list(psn_nos))

    def add(self, psn_no: str, region: str, insutype: str, pocket_year: int) -> None:
        self._tx.execute("INSERT INTO accounts (psn_no, insuplc_admdvs, insutype, balance_fen, prior_fen, pocket_year) "
                         "VALUES (?,?,?,0,0,?)", (psn_no, region, insutype, pocket_year))

    def balance(self, psn_no: str) -> int:
        return db.balance(self._tx, psn_no)

    def set_status(self, psn_no: str, status: str) -> None:
        self._tx.execute("UPDATE accounts SET status=? WHERE psn_no=?", (status, psn_no))

    def set_sharing_frozen(self, psn_no: str, frozen: int) -> None:
        self._tx.execute("UPDATE accounts SET sharing_frozen=? WHERE psn_no=?", (frozen, psn_no))

    def set_pocket_year(self, psn_no: str, year: int) -> None:
        self._tx.execute("UPDATE accounts SET pocket_year=? WHERE psn_no=?", (year, psn_no))


class Ledger(Repository):
    def post(self, txn_id: str, kind: str, biz_time: str, postings: list[tuple[str, int]]) -> None:
        db.post(self._tx, txn_id, kind, biz_time, postings)

    def records(self, accounts: tuple[str, ...], limit: int) -> list[Any]:
        return self._tx.execute(f"SELECT * FROM ledger WHERE account IN ({','.join('?' * len(accounts))}) "
                                "ORDER BY id LIMIT ?", (*accounts, limit)).fetchall()

    def sums(self, accounts: tuple[str, ...]) -> dict[str, int]:
        return {r[0]: r[1] for r in self._tx.execute(
            f"SELECT account, SUM(amount_fen) FROM ledger WHERE account IN ({','.join('?' * len(accounts))}) "
            "GROUP BY account", accounts).fetchall()}


class Bindings(Repository):
    def active(self, auth_id: str) -> Any:
        return self._tx.execute("SELECT * FROM bindings WHERE auth_id=? AND status='active'" + for_update(self._tx),
                                (auth_id,)).fetchone()

    def active_between(self, authorizer: str, member: str) -> Any:
        return self._tx.execute("SELECT * FROM bindings WHERE authorizer_psn_no=? AND member_psn_no=? AND "
                                "status='active'", (authorizer, member)).fetchone()

    def ever_between(self, authorizer: str, member: str) -> bool:
        return self._tx.execute("SELECT 1 FROM bindings WHERE authorizer_psn_no=? AND member_psn_no=?",
                                (authorizer, member)).fetchone() is not None

    def count_active(self, authorizer: str) -> int:
        return int(self._tx.execute("SELECT COUNT(*) FROM bindings WHERE authorizer_psn_no=? AND status='active'",
                                    (authorizer,)).fetchone()[0])

    def active_of_member(self, member: str) -> list[Any]:
        """In the order they pay: rank, then auth_id."""
        return db.active_bindings(self._tx, member)

    def of_person(self, psn_no: str, order: str = "rank, auth_id") -> list[Any]:
        """Every binding (any status) the person is a party to."""
        assert order in ("rank, auth_id", "auth_id")
        return self._tx.execute(f"SELECT * FROM bindings WHERE authorizer_psn_no=? OR member_psn_no=? ORDER BY {order}",
                                (psn_no, psn_no)).fetchall()

    def add(self, auth_id: str, authorizer: str, member: str, relation: str, rank: int, caps: list[int | None],
            created_time: str) -> None:
        self._tx.execute("INSERT INTO bindings (auth_id, authorizer_psn_no, member_psn_no, relation, rank, day_cap_fen, "
                         "month_cap_fen, year_cap_fen, created_time) VALUES (?,?,?,?,?,?,?,?,?)",
                         (auth_id, authorizer, member, relation, rank, *caps, created_time))

    def unbind(self, auth_id: str, ended_time: str) -> None:
        self._tx.execute("UPDATE bindings SET status='unbound', ended_time=? WHERE auth_id=?", (ended_time, auth_id))

    def set_frozen(self, auth_id: str, frozen: int) -> None:
        self._tx.execute("UPDATE bindings SET frozen=? WHERE auth_id=?", (frozen, auth_id))

    def set_rank(self, auth_id: str, rank: int) -> None:
        self._tx.execute("UPDATE bindings SET rank=? WHERE auth_id=?", (rank, auth_id))

    def set_caps(self, auth_id: str, caps: list[int | None]) -> None:
        self._tx.execute("UPDATE bindings SET day_cap_fen=?, month_cap_fen=?, year_cap_fen=? WHERE auth_id=?",
                         (*caps, auth_id))

    def record_change(self, authorizer: str, auth_id: str, kind: str, year: int, biz_time: str) -> None:
        self._tx.execute("INSERT INTO binding_changes (authorizer_psn_no, auth_id, kind, year, biz_time) "
                         "VALUES (?,?,?,?,?)", (authorizer, auth_id, kind, year, biz_time))

    def changes(self, authorizer: str, year: int) -> int:
        return int(self._tx.execute("SELECT COUNT(*) FROM binding_changes WHERE authorizer_psn_no=? AND year=?",
                                    (authorizer, year)).fetchone()[0])


class VerifyCodes(Repository):
    def get(self, psn_no: str, code: str) -> Any:
        return self._tx.execute("SELECT * FROM verify_codes WHERE psn_no=? AND code=?" + for_update(self._tx),
                                (psn_no, code)).fetchone()

    def use(self, psn_no: str, code: str) -> None:
        self._tx.execute("UPDATE verify_codes SET used=1 WHERE psn_no=? AND code=?", (psn_no, code))

    def issue(self, psn_no: str, code: str, expires_time: str) -> None:
        self._tx.execute("INSERT INTO verify_codes (psn_no, code, expires_time, used) VALUES (?,?,?,0) "
                         "ON CONFLICT (psn_no, code) DO UPDATE SET expires_time=excluded.expires_time, used=0",
                         (psn_no, code, expires_time))


class Transfers(Repository):
    """医保钱包 transfers: sent → claimed, or returned to the sender at the return time."""

    def to(self, transfer_id: str, to_psn_no: str) -> Any:
        return self._tx.execute("SELECT * FROM transfers WHERE transfer_id=? AND to_psn_no=?" + for_update(self._tx),
                                (transfer_id, to_psn_no)).fetchone()

    def sent_on(self, from_psn_no: str, day: str) -> int:
        return int(self._tx.execute("SELECT COUNT(*) FROM transfers WHERE from_psn_no=? AND day=?",
                                    (from_psn_no, day)).fetchone()[0])

    def add(self, transfer_id: str, from_psn_no: str, to_psn_no: str, amount_fen: int, postings: str, day: str,
            created_time: str, expires_time: str) -> None:
        self._tx.execute("INSERT INTO transfers (transfer_id, from_psn_no, to_psn_no, amount_fen, postings, state, day, "
                         "created_time, expires_time) VALUES (?,?,?,?,?, 'sent', ?,?,?)",
                         (transfer_id, from_psn_no, to_psn_no, amount_fen, postings, day, created_time, expires_time))

    def set_state(self, transfer_id: str, state: str) -> None:
        self._tx.execute("UPDATE transfers SET state=? WHERE transfer_id=?", (state, transfer_id))

    def due(self, when: str, psn_nos: Sequence[str]) -> list[Any]:
        """Unclaimed transfers from or to these people whose return time has come."""
        if not psn_nos:
            return []
        marks = ",".join("?" * len(psn_nos))
        return self._tx.execute(f"SELECT * FROM transfers WHERE state='sent' AND expires_time <= ? AND "
                                f"(from_psn_no IN ({marks}) OR to_psn_no IN ({marks})) ORDER BY transfer_id"
                                + for_update(self._tx), (when, *psn_nos, *psn_nos)).fetchall()


class Proxies(Repository):
    """亲情账户: who may settle with whose e-voucher."""

    def active(self, proxy: str, member: str) -> Any:
        return self._tx.execute("SELECT * FROM proxies WHERE proxy_psn_no=? AND member_psn_no=? AND status='active'",
                                (proxy, member)).fetchone()

    def count_others(self, proxy: str, member: str) -> int:
        return int(self._tx.execute("SELECT COUNT(*) FROM proxies WHERE proxy_psn_no=? AND status='active' AND "
                                    "member_psn_no!=?", (proxy, member)).fetchone()[0])

    def put(self, proxy: str, member: str, relation: str) -> None:
        self._tx.execute("INSERT INTO proxies (proxy_psn_no, member_psn_no, relation, status) VALUES (?,?,?, 'active') "
                         "ON CONFLICT (proxy_psn_no, member_psn_no) DO UPDATE SET status='active', "
                         "relation=excluded.relation", (proxy, member, relation))

    def remove(self, proxy: str, member: str) -> bool:
        cur = self._tx.execute("UPDATE proxies SET status='removed' WHERE proxy_psn_no=? AND member_psn_no=? "
                               "AND status='active'", (proxy, member))
        return cur.rowcount == 1


class Usage(Repository):
    """What each limit window (a binding's day/month/year cap, a channel's daily limit…) has used."""

    def of(self, key: str) -> int:
        return db.usage_of(self._tx, key)

    def add(self, usage: list[tuple[str, int]] | tuple[tuple[str, int], ...], sign: int,
            caps: dict[str, int] | None = None) -> None:
        db.add_usage(self._tx, usage, sign, caps)

    def all(self) -> list[Any]:
        return self._tx.execute("SELECT key, used_fen FROM usage").fetchall()


class Payments(Repository):
    def get(self, setl_id: str) -> dict[str, Any] | None:
        return db.load_payment(self._tx, setl_id)

    def add(self, setl_id: str, psn_no: str, fixmedins_code: str, biz_time: str, year: int, medfee_fen: int,
            psn_part_fen: int, own_fen: int, mulaid: str, wallet_fen: int, cash_fen: int, usage: str,
            postings: str) -> None:
        self._tx.execute("INSERT INTO payments (setl_id, psn_no, fixmedins_code, biz_time, year, medfee_fen, "
                         "psn_part_fen, own_fen, mulaid, wallet_fen, cash_fen, usage, postings, state) "
                         "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,'paid')",
                         (setl_id, psn_no, fixmedins_code, biz_time, year, medfee_fen, psn_part_fen, own_fen, mulaid,
                          wallet_fen, cash_fen, usage, postings))

    def set_refunded(self, setl_id: str) -> None:
        self._tx.execute("UPDATE payments SET state='refunded' WHERE setl_id=?", (setl_id,))

    def paid_of(self, psn_no: str, year: int) -> list[Any]:
        return self._tx.execute("SELECT * FROM payments WHERE psn_no=? AND year=? AND state='paid'",
                                (psn_no, year)).fetchall()

    def audit(self) -> dict[str, Any]:
        return db.audit(self._tx)

    def audit_items(self, after: str, limit: int, regions: set[str]) -> dict[str, Any]:
        return db.audit_items(self._tx, after, limit, regions)


class AccountsUnitOfWork(UnitOfWork):
    def __init__(self, tx: Tx):
        super().__init__(tx)
        self.people = People(tx)
        self.accounts = Accounts(tx)
        self.ledger = Ledger(tx)
        self.bindings = Bindings(tx)
        self.verify_codes = VerifyCodes(tx)
        self.transfers = Transfers(tx)
        self.proxies = Proxies(tx)
        self.usage = Usage(tx)
        self.payments = Payments(tx)
