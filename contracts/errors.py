"""Stable error codes carried in Reply.err_code (the human text is in err_msg)."""
from __future__ import annotations


class ErrorCode:
    BAD_MESSAGE = "E_BAD_MESSAGE"  # not JSON / not an envelope
    BAD_INPUT = "E_BAD_INPUT"  # envelope fine, input fails validation
    UNKNOWN_INFNO = "E_UNKNOWN_INFNO"
    MSGID_CONFLICT = "E_MSGID_CONFLICT"  # same msgid, different content
    REGION_NOT_SERVED = "E_REGION_NOT_SERVED"
    NO_POLICY = "E_NO_POLICY"
    UNKNOWN_PERSON = "E_UNKNOWN_PERSON"
    UNKNOWN_FACILITY = "E_UNKNOWN_FACILITY"
    WRONG_INSUTYPE = "E_WRONG_INSUTYPE"
    MED_TYPE_MISMATCH = "E_MED_TYPE_MISMATCH"
    FACILITY_TYPE_MISMATCH = "E_FACILITY_TYPE_MISMATCH"
    AMOUNT_MISMATCH = "E_AMOUNT_MISMATCH"
    SETTLEMENT_NOT_FOUND = "E_SETTLEMENT_NOT_FOUND"
    NOT_YOUR_SETTLEMENT = "E_NOT_YOUR_SETTLEMENT"
    ALREADY_REVERSED = "E_ALREADY_REVERSED"
    COMPENSATED = "E_COMPENSATED"  # the msgid was cancelled by 2601 冲正
    SETTLEMENT_PENDING = "E_SETTLEMENT_PENDING"
    ACCOUNT_EXISTS = "E_ACCOUNT_EXISTS"
    UNKNOWN_ACCOUNT = "E_UNKNOWN_ACCOUNT"
    BINDING_INVALID = "E_BINDING_INVALID"
    # family mutual aid (家庭共济), each rule its own code
    VERIFY_FAILED = "E_VERIFY_FAILED"
    AUTHORIZER_NOT_EMPLOYEE = "E_AUTHORIZER_NOT_EMPLOYEE"
    ACCOUNT_NOT_NORMAL = "E_ACCOUNT_NOT_NORMAL"
    EVOUCHER_INACTIVE = "E_EVOUCHER_INACTIVE"
    SERVICE_NOT_OPEN = "E_SERVICE_NOT_OPEN"
    CROSS_PROVINCE_NOT_ALLOWED = "E_CROSS_PROVINCE_NOT_ALLOWED"
    RELATION_NOT_ALLOWED = "E_RELATION_NOT_ALLOWED"
    BALANCE_TOO_LOW = "E_BALANCE_TOO_LOW"
    TOO_MANY_MEMBERS = "E_TOO_MANY_MEMBERS"
    MEMBER_ALREADY_BOUND = "E_MEMBER_ALREADY_BOUND"
    ALREADY_BOUND = "E_ALREADY_BOUND"
    TOO_MANY_CHANGES = "E_TOO_MANY_CHANGES"
    BINDING_NOT_FOUND = "E_BINDING_NOT_FOUND"
    NOT_PARTY = "E_NOT_PARTY"
    REORDER_NOT_ALLOWED = "E_REORDER_NOT_ALLOWED"
    NOT_FAMILY = "E_NOT_FAMILY"
    WALLET_QUIET_HOURS = "E_WALLET_QUIET_HOURS"
    WALLET_DAILY_COUNT = "E_WALLET_DAILY_COUNT"
    WALLET_AMOUNT = "E_WALLET_AMOUNT"
    WALLET_SAME_PROVINCE = "E_WALLET_SAME_PROVINCE"
    INSUFFICIENT_BALANCE = "E_INSUFFICIENT_BALANCE"
    TRANSFER_NOT_FOUND = "E_TRANSFER_NOT_FOUND"
    TRANSFER_EXPIRED = "E_TRANSFER_EXPIRED"
    PROXY_NOT_AUTHORIZED = "E_PROXY_NOT_AUTHORIZED"
    TOO_MANY_PROXY_MEMBERS = "E_TOO_MANY_PROXY_MEMBERS"
    NOT_RESIDENT_INSURED = "E_NOT_RESIDENT_INSURED"
    CONTRIBUTION_NOT_ALLOWED = "E_CONTRIBUTION_NOT_ALLOWED"
    CAP_EXCEEDED = "E_CAP_EXCEEDED"  # a G141 contribution above what the caps it counts toward leave
    SIGN_NO_UNKNOWN = "E_SIGN_NO_UNKNOWN"
    SIGN_NO_EXPIRED = "E_SIGN_NO_EXPIRED"
    TIMEOUT = "E_TIMEOUT"
    UNROUTABLE = "E_UNROUTABLE"
    INTERNAL = "E_INTERNAL"
    # visits (2201 挂号 / 2401 入院 … 2207 / 2304), each refusal its own code
    VISIT_UNKNOWN = "E_VISIT_UNKNOWN"  # no such mdtrt_id for this facility, person and region
    VISIT_SETTLED = "E_VISIT_SETTLED"  # already settled (or being settled)
    VISIT_CANCELLED = "E_VISIT_CANCELLED"  # 2202 cancelled it, or the sweep closed it as abandoned
    VISIT_NO_DETAILS = "E_VISIT_NO_DETAILS"  # nothing (left) to settle or to discharge with
    VISIT_STATE = "E_VISIT_STATE"  # the transaction does not fit the visit's stage (e.g. upload after 2402)
    CHRG_BCHNO_UNKNOWN = "E_CHRG_BCHNO_UNKNOWN"  # no uploaded detail carries that chrg_bchno
    DETAIL_UNKNOWN = "E_DETAIL_UNKNOWN"  # 2205/2302 name a line that was never uploaded
    DETAIL_CONFLICT = "E_DETAIL_CONFLICT"  # feedetl_sn uploaded before with other content
    NOT_DISCHARGED = "E_NOT_DISCHARGED"  # 2304 before 2402
    # issue 13: who may do what
    NOT_YOUR_MSGID = "E_NOT_YOUR_MSGID"  # a msgid of another facility: sent under its prefix, or a 2601 of one
    SIGN_NO_WRONG_DAY = "E_SIGN_NO_WRONG_DAY"  # a sign_no used on another business day than its own
    BIZ_TIME_REFUSED = "E_BIZ_TIME_REFUSED"  # inf_time too far behind / ahead of the facility's clock
    AMOUNT_TOO_LARGE = "E_AMOUNT_TOO_LARGE"  # a balance or amount would leave the wire's money format
    VISIT_ID_CONFLICT = "E_VISIT_ID_CONFLICT"  # a visit_id reused with other content
    SIGNATURE_MISSING = "E_SIGNATURE_MISSING"
    SIGNATURE_INVALID = "E_SIGNATURE_INVALID"
    SIGNATURE_EXPIRED = "E_SIGNATURE_EXPIRED"
    NONCE_REUSED = "E_NONCE_REUSED"


class GongjiError(Exception):
    """A refusal with a code: the request changes nothing and gets infcode -1."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message
