"""The bench's seeded population (M accounts, families, facilities) and its visit mix."""
from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from contracts.admin import Bind
from contracts.pos import SettleVisit

HZ, BJ = "330100", "110000"
BULK = 5000  # the contracts' maximum per G003 / G103 message
MAX_CHILDREN = 2000  # bound family members (one G111 each), whatever M is: the visit mix stays the same
LOAD_TIME = "2026-01-01 08:00:00"
LOAD_EPOCH = datetime(2026, 1, 1, 8, 0, 0)
VISIT_EPOCH = datetime(2026, 2, 1, 8, 0, 0)  # business time (Asia/Shanghai) of visit 0; visit i is i seconds later
LOADER_CODE = "GONGJIBENCH1"  # the fixmedins_code in the msgids of the loading messages

# (code, name, type, level, region)
FACILITIES = [
    ("PBENCH330101", "bench pharmacy 1 (Hangzhou)", "pharmacy", "community", HZ),
    ("PBENCH330102", "bench pharmacy 2 (Hangzhou)", "pharmacy", "community", HZ),
    ("PBENCH330103", "bench pharmacy 3 (Hangzhou)", "pharmacy", "community", HZ),
    ("HBENCH330101", "bench community health centre (Hangzhou)", "hospital", "community", HZ),
    ("HBENCH330103", "bench level-3 hospital (Hangzhou)", "hospital", "level3", HZ),
    ("PBENCH110001", "bench pharmacy (Beijing)", "pharmacy", "community", BJ),
    ("HBENCH110003", "bench level-3 hospital (Beijing)", "hospital", "level3", BJ),
]
HZ_PHARMACIES = ["PBENCH330101", "PBENCH330102", "PBENCH330103"]
HZ_HOSPITALS = ["HBENCH330101", "HBENCH330103"]

# (code, declared class, price range in yuan); XA01/XB02/XC03 are in Hangzhou's catalog, the rest are not
PHARMACY_ITEMS = [("XA01", "01", (8, 40)), ("XB02", "02", (15, 60)), ("XC03", "03", (30, 120)),
                  ("OTC101", "01", (5, 30)), ("OTC202", "02", (10, 80))]
OUTPATIENT_ITEMS = [("EXAM01", "01", (20, 300)), ("LAB02", "01", (30, 200)), ("XA01", "01", (8, 40)),
                    ("XB02", "02", (15, 60)), ("INJ03", "02", (10, 90))]


# ---- population and visit mix ---------------------------------------------------------------------------
def adult_no(i: int) -> str:
    return f"BA{i:08d}"


def child_no(j: int) -> str:
    return f"BC{j:08d}"


def adult_region(i: int) -> str:
    return BJ if i % 10 == 9 else HZ  # one adult in ten is insured in Beijing


@dataclass
class Population:
    """M adults with a personal account (90% Hangzhou, 10% Beijing) and K Hangzhou children (居民医保, no
    account of their own) each bound by G111 to a Hangzhou adult. Fully determined by (accounts, seed)."""

    accounts: int
    seed: int
    children: int = 0
    retired: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.accounts < 10:
            raise SystemExit("--accounts must be at least 10")
        self.children = min(max(self.accounts // 10, 1), MAX_CHILDREN)

    def hz_adult(self, rng: random.Random) -> int:
        i = rng.randrange(self.accounts)
        return i - 1 if adult_region(i) == BJ else i

    def bj_adult(self, rng: random.Random) -> int:
        return rng.randrange(self.accounts // 10) * 10 + 9

    def persons(self) -> dict[str, list[dict[str, Any]]]:
        """G003 payloads' persons, by insured region."""
        rng = random.Random(self.seed * 1_000_003 + 1)
        out: dict[str, list[dict[str, Any]]] = {HZ: [], BJ: []}
        for i in range(self.accounts):
            region = adult_region(i)
            out[region].append({"psn_no": adult_no(i), "psn_name": f"bench adult {i}", "insutype": "310",
                                "psn_type": "retired" if rng.random() < 0.2 else "employed",
                                "insuplc_admdvs": region})
        for j in range(self.children):
            out[HZ].append({"psn_no": child_no(j), "psn_name": f"bench child {j}", "insutype": "390",
                            "psn_type": "employed", "insuplc_admdvs": HZ})
        return out

    def accounts_rows(self) -> list[dict[str, Any]]:
        """G103 payloads' accounts: opening balances 0 (5%) or 300..8000 yuan."""
        rng = random.Random(self.seed * 1_000_003 + 2)
        rows = []
        for i in range(self.accounts):
            balc = "0.00" if rng.random() < 0.05 else f"{rng.randint(300, 8000)}.{rng.randint(0, 99):02d}"
            rows.append({"psn_no": adult_no(i), "insuplc_admdvs": adult_region(i), "insutype": "310",
                         "opening_balc": balc})
        return rows

    def holders(self) -> list[dict[str, Any]]:
        """G104 payloads: the children are known to the accounts service without an account of their own."""
        return [{"psn_no": child_no(j), "insuplc_admdvs": HZ, "insutype": "390"} for j in range(self.children)]

    def bindings(self) -> list[dict[str, Any]]:
        """G111 payloads: child j is bound to adult 10*j (a Hangzhou adult; each authorizer has one member)."""
        out = []
        for j in range(self.children):
            caps = {"day_cap": "200.00", "month_cap": "1000.00"} if j % 2 == 0 else {}
            b: dict[str, Any] = {"authorizer_psn_no": adult_no(10 * j), "member_psn_no": child_no(j),
                                 "relation": "child", "rank": 1, **caps}
            if "verify" in Bind.model_fields:  # the identity check the binding lifecycle asks for
                b["verify"] = {"method": "face", "passed": True}
            out.append(b)
        return out


def _details(rng: random.Random, items: list[tuple[str, str, tuple[int, int]]], lines: int) -> list[dict[str, Any]]:
    out = []
    for n, (code, lv, (lo, hi)) in enumerate(rng.sample(items, lines)):
        cents = rng.randint(lo * 100, hi * 100)
        cnt = rng.choice((1, 1, 1, 2, 3))
        price = Decimal(cents).scaleb(-2)
        out.append({"feedetl_sn": str(n + 1), "med_list_codg": code, "cnt": str(cnt), "pric": f"{price:.2f}",
                    "det_item_fee_sumamt": f"{price * cnt:.2f}", "chrgitm_lv": lv})
    return out


class VisitMix:
    """Visit i, deterministic for a seed when generated in order 0, 1, 2, ...

    Patients: 10% a child paid by the family (共济), 12% a Beijing adult (1 in 5 of those buys in a Hangzhou
    pharmacy: cross-region), the rest Hangzhou adults. Visits: 60% pharmacy (41), 40% outpatient (11).
    Every visit has its own business second, so no two visits share a POS msgid prefix.
    """

    def __init__(self, pop: Population, seed: int, run_tag: str, timeout_ms: int, presettle: bool = True):
        self.pop = pop
        self.presettle = presettle  # False: settle straight away (2102 / 2207 without 2101 / 2206)
        self.rng = random.Random(seed * 1_000_003 + 4)
        self.run_tag = run_tag
        self.timeout_ms = timeout_ms
        self.kinds: Counter[str] = Counter()

    def command(self, i: int) -> tuple[bytes, str]:
        rng = self.rng
        r = rng.random()
        insutype = "310"
        if r < 0.10:
            kind, psn, region, area = "child", child_no(rng.randrange(self.pop.children)), HZ, HZ
            insutype = "390"
        elif r < 0.22:
            psn, region = adult_no(self.pop.bj_adult(rng)), BJ
            kind, area = ("bj-cross", HZ) if rng.random() < 0.2 else ("bj", BJ)
        else:
            kind, psn, region, area = "hz", adult_no(self.pop.hz_adult(rng)), HZ, HZ
        pharmacy = kind == "bj-cross" or rng.random() < 0.6
        if area == HZ:
            facility = rng.choice(HZ_PHARMACIES) if pharmacy else rng.choice(HZ_HOSPITALS)
        else:
            facility = "PBENCH110001" if pharmacy else "HBENCH110003"
        details = _details(rng, PHARMACY_ITEMS if pharmacy else OUTPATIENT_ITEMS, rng.randint(1, 3))
        self.kinds[f"{kind}/{'41' if pharmacy else '11'}"] += 1
        biz = (VISIT_EPOCH + timedelta(seconds=i)).strftime("%Y-%m-%d %H:%M:%S")
        visit_id = f"{self.run_tag}-{i}"
        cmd = {"cmd": "settle", "visit_id": visit_id, "fixmedins_code": facility, "insuplc_admdvs": region,
               "mdtrtarea_admvs": area, "psn_no": psn, "med_type": "41" if pharmacy else "11", "insutype": insutype,
               "biz_time": biz, "details": details, "presettle": self.presettle, "timeout_ms": self.timeout_ms}
        body = json.dumps(cmd, ensure_ascii=False).encode()
        if i < 20:
            SettleVisit.model_validate_json(body)  # what the bench sends is what the contracts accept
        return body, visit_id
