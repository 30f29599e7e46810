"""The runner's expectation checks: a step's expect / expect_one_of against what happened, and the final
balances and cumulative figures."""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from contracts.money import from_fen, to_fen
from contracts.pos import SettleVisit

from ..figures import totals
from ..scenario.loader import FlatStep
from ..scenario.model import MONEY_FIELDS, CumExpect, Expect
from ..scenario.references import UnresolvedReference, substitute


def _norm(v: Any) -> Any:
    return v if isinstance(v, (dict, list)) or v is None else str(v)


def _expect_summary(exp: Expect) -> dict[str, Any]:
    return exp.model_dump(mode="json", exclude_unset=True)


def _actual_value(actual: dict[str, Any], key: str) -> Any:
    head = key.split(".", 1)[0]
    return actual.get(head)


class Expectations:
    """Part of the Runner (a mixin): it uses the runner's data, loaded scenario, mapper, client and fail()."""

    # ---- expectations -----------------------------------------------------------------------------------
    async def judge(self, fs: FlatStep, actual: dict[str, Any]) -> None:
        st = fs.step
        where = self.loaded.where(fs.path)
        row: dict[str, Any] = {"step": fs.name, "at": f"{fs.at:%Y-%m-%d %H:%M:%S}", "event": st.event,
                               **{k: v for k, v in actual.items() if k not in ("notes", "err_msg", "output")}}
        if "output" in actual:
            row["output"] = actual["output"]
        failures_before = len(self.data.failures)
        if "error" in actual:
            self.fail(fs.name, "outcome", "an outcome", actual["error"], where)
        expects: list[Expect] = []
        if st.expect is not None:
            expects = [st.expect]
        elif st.expect_one_of is None and st.event in ("deposit", "bind", "admin"):
            expects = [Expect(infcode=0)]  # a setup-like step must succeed unless it says otherwise
        if "error" not in actual:
            if expects:
                exp = expects[0]
                path = (*fs.path, "expect")
                for fieldname, want, got in await self.compare(exp, actual, fs.at):
                    self.fail(fs.name, fieldname, want, got,
                              self.loaded.where((*path, *fieldname.split("."))) if st.expect else where)
                if not any(f["step"] == fs.name for f in self.data.failures[failures_before:]):
                    self.data.passed += 1
            elif st.expect_one_of is not None:
                tried = []
                for exp in st.expect_one_of:
                    diff = await self.compare(exp, actual, fs.at)
                    if not diff:
                        break
                    tried.append(diff)
                else:
                    keys = sorted({f for diff in tried for f, _, _ in diff})
                    self.fail(fs.name, "expect_one_of", [_expect_summary(e) for e in st.expect_one_of],
                              {k: _actual_value(actual, k) for k in keys},
                              self.loaded.where((*fs.path, "expect_one_of")))
                if len(self.data.failures) == failures_before:
                    self.data.passed += 1
        row["passed"] = len(self.data.failures) == failures_before
        row["expected"] = bool(expects or st.expect_one_of)
        self.data.steps.append(row)

    async def compare(self, exp: Expect, actual: dict[str, Any], at: datetime) -> list[tuple[str, Any, Any]]:
        diffs: list[tuple[str, Any, Any]] = []
        given = exp.model_fields_set
        for key in ("status", "infcode", "err_code"):
            if key in given and getattr(exp, key) != actual.get(key):
                diffs.append((key, getattr(exp, key), actual.get(key)))
        if "err_msg_contains" in given and self._subst(exp.err_msg_contains or "") not in (actual.get("err_msg") or ""):
            diffs.append(("err_msg_contains", exp.err_msg_contains, actual.get("err_msg")))
        for key in MONEY_FIELDS:
            if key in given:
                want = getattr(exp, key)
                got = actual.get(key)
                if got is None or Decimal(got) != want:
                    diffs.append((key, f"{want:.2f}", got if got is not None else f"no setlinfo ({actual.get('status')})"))
        if exp.notes_contain:
            notes = actual.get("notes") or []
            for text in self._subst(exp.notes_contain):
                if not any(text in n for n in notes):
                    diffs.append(("notes_contain", text, notes))
        if exp.mulaid is not None:
            want_m = {k: f"{v:.2f}" for k, v in exp.mulaid.items() if v != 0}
            got_m = {k: v for k, v in (actual.get("mulaid") or {}).items()}
            if want_m != got_m:
                diffs.append(("mulaid", want_m, got_m))
        if exp.funds is not None:
            want_f = {k: f"{v:.2f}" for k, v in exp.funds.items() if v != 0}
            if want_f != (actual.get("funds") or {}):
                diffs.append(("funds", want_f, actual.get("funds") or {}))
        if exp.output is not None:
            out = actual.get("output") or {}
            try:
                want_out = substitute(exp.output, self.data.results)
            except UnresolvedReference as exc:
                want_out = {k: str(exc) for k in exp.output}
            for k, v in want_out.items():
                if _norm(out.get(k)) != _norm(v):
                    diffs.append((f"output.{k}", v, out.get(k)))
        if exp.balances:
            for psn, want in exp.balances.items():
                got = await self.balance_of(psn, at)
                if got != f"{want:.2f}":
                    diffs.append((f"balances.{psn}", f"{want:.2f}", got))
        if exp.cumulative:
            for psn, cum in exp.cumulative.items():
                diffs += await self.cumulative_diffs(psn, cum, at, prefix="cumulative")
        return diffs

    def _subst(self, value: Any) -> Any:
        try:
            return substitute(value, self.data.results)
        except UnresolvedReference as exc:
            return str(exc)

    async def balance_of(self, psn: str, at: datetime) -> str:
        person = self.data.people.get(psn)
        rep = await self.call("accounts", "G121", {"psn_no": self.mapper.psn(psn)}, at,
                              person.region if person else None)
        if rep.infcode != 0:
            return f"{rep.err_code}: {self.mapper.unmap_text(rep.err_msg or '')}"
        return str((rep.output or {}).get("balc"))

    async def cumulative_of(self, psn: str, at: datetime, year: int | None) -> dict[str, Any]:
        person = self.data.people.get(psn)
        data: dict[str, Any] = {"psn_no": self.mapper.psn(psn)}
        if year is not None:
            data["cum_year"] = year
        rep = await self.call("bureau", "5206", data, at, person.region if person else None)
        if rep.infcode != 0:
            return {"error": f"{rep.err_code}: {self.mapper.unmap_text(rep.err_msg or '')}"}
        return rep.output or {}

    async def cumulative_diffs(self, psn: str, cum: CumExpect, at: datetime, prefix: str
                               ) -> list[tuple[str, Any, Any]]:
        got = await self.cumulative_of(psn, at, cum.cum_year)
        diffs = []
        for key in cum.model_fields_set - {"cum_year"}:
            want = getattr(cum, key)
            want_s = f"{want:.2f}" if isinstance(want, Decimal) else want
            if "error" in got or got.get(key) != want_s:
                diffs.append((f"{prefix}.{psn}.{key}", want_s, got.get(key, got.get("error"))))
        return diffs

    async def final_expectations(self) -> None:
        fin = self.sc.final
        if fin is None:
            return
        d = self.data
        at = d.end_time or self.sc.start
        where = lambda *k: self.loaded.where(("final", *k))  # noqa: E731
        diffs: list[tuple[str, Any, Any, str]] = []
        settles = [o for o in d.observations if isinstance(o.cmd, SettleVisit)]
        if fin.visits is not None and fin.visits != len(settles):
            diffs.append(("visits", fin.visits, len(settles), where("visits")))
        if fin.outcomes is not None:
            counts: dict[str, int] = {}
            for o in d.observations:
                if o.outcome is not None:
                    counts[o.outcome.status] = counts.get(o.outcome.status, 0) + 1
            for status, n in fin.outcomes.items():
                if counts.get(status, 0) != n:
                    diffs.append((f"outcomes.{status}", n, counts.get(status, 0), where("outcomes", status)))
        if fin.totals is not None:
            tot = totals(d.observations)
            for key, want in fin.totals.items():
                if tot[key] != to_fen(want):
                    diffs.append((f"totals.{key}", f"{want:.2f}", f"{from_fen(tot[key]):.2f}",
                                  where("totals", key)))
        for psn, want in (fin.balances or {}).items():
            got = await self.balance_of(psn, at)
            if got != f"{want:.2f}":
                diffs.append((f"balances.{psn}", f"{want:.2f}", got, where("balances", psn)))
        for psn, cum in (fin.cumulative or {}).items():
            for f, w, g in await self.cumulative_diffs(psn, cum, at, "cumulative"):
                diffs.append((f, w, g, where("cumulative", psn)))
        for fieldname, want, got, loc in diffs:
            self.fail("final", fieldname, want, got, loc)
        if not diffs:
            d.passed += 1
