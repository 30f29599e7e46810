"""Transaction codes and the input model each one takes."""
from __future__ import annotations

from pydantic import BaseModel

from . import admin, national, settlement

PRESETTLE = {"2101", "2206", "2303"}
SETTLE = {"2102", "2207", "2304"}
REVERSE = {"2103", "2208", "2305"}
COMPENSATE = "2601"
SIGN_IN = "9001"
PERSON_INFO = "1101"
CUMULATIVE = "5206"
# The national visit flow (contracts/national.py): registration, details, admission, discharge, queries.
REGISTER, CANCEL_REGISTER, VISIT_INFO, UPLOAD, CANCEL_DETAILS = "2201", "2202", "2203", "2204", "2205"
ADMIT, DISCHARGE, IPT_UPLOAD, IPT_CANCEL_DETAILS = "2401", "2402", "2301", "2302"
SETTLEMENT_QUERY, DETAILS_QUERY = "5203", "5204"
NATIONAL_INPUTS = national.NATIONAL_INPUTS  # 2206/2207/… take these when the input has the national node

# med_type → (pre-settle, settle, reverse)
TRIPLES: dict[str, tuple[str, str, str]] = {
    "41": ("2101", "2102", "2103"),
    "11": ("2206", "2207", "2208"),
    "13": ("2206", "2207", "2208"),
    "14": ("2206", "2207", "2208"),
    "21": ("2303", "2304", "2305"),
}

BUREAU_INPUTS: dict[str, type[BaseModel]] = {
    **{code: settlement.SettleInput for code in PRESETTLE | SETTLE},
    **{code: settlement.ReverseInput for code in REVERSE},
    COMPENSATE: settlement.CompensateInput,
    PERSON_INFO: settlement.PersonInfoInput,
    CUMULATIVE: settlement.CumulativeInput,
    SIGN_IN: settlement.SignInInput,
    "3201": settlement.ReconcileInput,  # 对总账
    "G001": admin.RegisterFacility,
    "G002": admin.RegisterPerson,
    "G003": admin.RegisterPersons,
    "G199": admin.AuditQuery,
}

ACCOUNTS_ADMIN_INPUTS: dict[str, type[BaseModel]] = {
    "G101": admin.OpenAccount,
    "G102": admin.Deposit,
    "G103": admin.OpenAccounts,
    "G104": admin.RegisterHolder,
    "G105": admin.AccountStatus,
    "G109": admin.FaceCheck,
    "G110": admin.RequestCode,
    "G111": admin.Bind,
    "G112": admin.Unbind,
    "G113": admin.Freeze,
    "G114": admin.Freeze,
    "G115": admin.Reorder,
    "G116": admin.ChangeCaps,
    "G117": admin.ListBindings,
    "G118": admin.MemberCosts,
    "G119": admin.TransactionRecords,
    "G121": admin.AccountQuery,
    "G131": admin.WalletTransfer,
    "G132": admin.WalletClaim,
    "G141": admin.ResidentContribution,
    "G151": admin.Proxy,
    "G152": admin.Proxy,
    "G199": admin.AuditQuery,
}


def needs_sign_in(infno: str) -> bool:
    """Every national transaction but 9001 itself carries a valid sign_no; gongji's G-codes are the
    simulator's own administration channel and do not."""
    return not infno.startswith("G") and infno != SIGN_IN


def triple_for(med_type: str) -> tuple[str, str, str]:
    return TRIPLES[med_type]
