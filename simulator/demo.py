"""A small demo population (a Hangzhou family and a Beijing retiree) and a handful of visits."""
from __future__ import annotations

from contracts.admin import Bind, OpenAccount, RegisterFacility, RegisterPerson
from contracts.pos import SettleVisit
from contracts.settlement import FeeDetail

from .client import Client

HZ, BJ = "330100", "110000"
LOAD_TIME = "2026-01-01 08:00:00"

FACILITIES = [
    RegisterFacility(fixmedins_code="P33010000001", fixmedins_name="杭州民生大药房 (demo)", fixmedins_type="pharmacy",
                     hosp_lv="community", admdvs=HZ),
    RegisterFacility(fixmedins_code="H33010000003", fixmedins_name="浙江大学附属第一医院 (demo)",
                     fixmedins_type="hospital", hosp_lv="level3", admdvs=HZ),
    RegisterFacility(fixmedins_code="H33010000001", fixmedins_name="湖滨街道社区卫生服务中心 (demo)",
                     fixmedins_type="hospital", hosp_lv="community", admdvs=HZ),
    RegisterFacility(fixmedins_code="H11010000003", fixmedins_name="北京协和医院 (demo)", fixmedins_type="hospital",
                     hosp_lv="level3", admdvs=BJ),
]

PEOPLE = [
    (RegisterPerson(psn_no="HZ-MOTHER", psn_name="王芳", insutype="310", psn_type="employed", insuplc_admdvs=HZ),
     "3000.00"),
    # A child is resident-insured (居民医保): no personal account of her own; her mother's account helps.
    (RegisterPerson(psn_no="HZ-CHILD", psn_name="李小雨", insutype="390", psn_type="employed", insuplc_admdvs=HZ),
     None),
    (RegisterPerson(psn_no="HZ-GRANDPA", psn_name="李建国", insutype="310", psn_type="retired", insuplc_admdvs=HZ),
     "5000.00"),
    (RegisterPerson(psn_no="BJ-RETIREE", psn_name="张秀英", insutype="310", psn_type="retired", insuplc_admdvs=BJ),
     "800.00"),
]

BINDINGS = [Bind(authorizer_psn_no="HZ-MOTHER", member_psn_no="HZ-CHILD", relation="child", rank=1,
                 day_cap="200.00", month_cap="1000.00",
                 verify={"method": "face", "passed": True})]  # type: ignore[arg-type]


async def load(client: Client) -> None:
    """Idempotent: the msgids are fixed, so loading twice changes nothing."""
    for i, fac in enumerate(FACILITIES):
        await _ok(client.bureau_registry(client.envelope("G001", fac.model_dump(mode="json"), insuplc_admdvs=fac.admdvs,
                                                         when=LOAD_TIME, msgid=_msgid(1, i))))
    for i, (person, balance) in enumerate(PEOPLE):
        await _ok(client.bureau(client.envelope("G002", person.model_dump(mode="json"),
                                                insuplc_admdvs=person.insuplc_admdvs, when=LOAD_TIME,
                                                msgid=_msgid(2, i))))
        if balance is None:  # known to the accounts service, without an account of her own
            holder = {"psn_no": person.psn_no, "insuplc_admdvs": person.insuplc_admdvs, "insutype": person.insutype}
            await _ok(client.accounts_admin(client.envelope("G104", holder, insuplc_admdvs=person.insuplc_admdvs,
                                                            when=LOAD_TIME, msgid=_msgid(3, i))))
            continue
        acct = OpenAccount(psn_no=person.psn_no, insuplc_admdvs=person.insuplc_admdvs, insutype=person.insutype,
                           opening_balc=balance)  # type: ignore[arg-type]
        await _ok(client.accounts_admin(client.envelope("G101", acct.model_dump(mode="json"),
                                                        insuplc_admdvs=person.insuplc_admdvs, when=LOAD_TIME,
                                                        msgid=_msgid(3, i))))
    for i, bind in enumerate(BINDINGS):
        # The identity check: the authorizer's face check, recorded by the accounts service (G109), its token.
        check = await client.accounts_admin(client.envelope("G109", {"psn_no": bind.authorizer_psn_no, "passed": True},
                                                            insuplc_admdvs=HZ, when=LOAD_TIME, msgid=_msgid(5, i)))
        data = bind.model_dump(mode="json", exclude_none=True)
        if check.infcode == 0 and check.output:
            data["verify"] = {"method": "face", "token": check.output["face_token"]}
        await _ok(client.accounts_admin(client.envelope("G111", data, insuplc_admdvs=HZ,
                                                        when=LOAD_TIME, msgid=_msgid(4, i))))


def _msgid(kind: int, i: int) -> str:
    return f"GONGJIDEMO01{LOAD_TIME.replace('-', '').replace(' ', '').replace(':', '')}{kind}{i:03d}"


async def _ok(call) -> None:  # type: ignore[no-untyped-def]
    reply = await call
    # A repeated load answers with the stored replies; an existing account is fine too.
    if reply.infcode != 0 and reply.err_code not in ("E_ACCOUNT_EXISTS", "E_ALREADY_BOUND"):
        raise RuntimeError(f"demo load refused: {reply.err_code} {reply.err_msg}")


def line(code: str, price: str, cnt: str = "1", lv: str = "01", prop: str | None = None) -> FeeDetail:
    from decimal import Decimal

    from contracts.money import line_total
    total = f"{line_total(Decimal(price), cnt)}"
    return FeeDetail(feedetl_sn=code, med_list_codg=code, cnt=cnt, pric=price, det_item_fee_sumamt=total,
                     chrgitm_lv=lv, selfpay_prop=prop)  # type: ignore[arg-type]


def visits(run_tag: str) -> list[SettleVisit]:
    return [
        SettleVisit(visit_id=f"demo-{run_tag}-1", fixmedins_code="P33010000001", insuplc_admdvs=HZ, mdtrtarea_admvs=HZ,
                    psn_no="HZ-CHILD", insutype="390", med_type="41", biz_time="2026-03-02 10:00:00",
                    details=[line("XB02", "36.50", "2"), line("XA01", "12.00")]),  # type: ignore[arg-type]
        SettleVisit(visit_id=f"demo-{run_tag}-2", fixmedins_code="H33010000003", insuplc_admdvs=HZ, mdtrtarea_admvs=HZ,
                    psn_no="HZ-GRANDPA", med_type="11", biz_time="2026-03-02 11:00:00",
                    details=[line("EXAM01", "320.00"), line("XB02", "58.00", "2")]),  # type: ignore[arg-type]
        SettleVisit(visit_id=f"demo-{run_tag}-3", fixmedins_code="H11010000003", insuplc_admdvs=BJ, mdtrtarea_admvs=BJ,
                    psn_no="BJ-RETIREE", med_type="21", biz_time="2026-03-05 09:00:00",
                    details=[line("BED", "120.00", "7"), line("SURG", "8600.00"),
                             line("IMPORTED", "1500.00", lv="03")]),  # type: ignore[arg-type]
    ]
