"""Scenario files (YAML): the models, and a loader whose errors name the file, the line and the field.

A scenario is: a seed; the regions it uses and, optionally, a directory of policy files; a population
(explicit facilities, people, families and bindings, and/or a seeded generator); a timeline of steps on a
virtual (business) clock; expectations per step and for the end. `docs` in scenarios/README.md.

    name: child_paid_by_mother
    seed: 1
    regions: ["330100"]
    facilities:
      - {code: PHZ000000001, type: pharmacy, level: community, region: "330100"}
    people:
      - {psn_no: HZ-MOTHER, region: "330100", balance: "50.00"}
      - {psn_no: HZ-CHILD, region: "330100", insutype: "390", balance: null}     # no account of her own
    families:
      - {name: wang, members: [HZ-MOTHER, HZ-CHILD]}
    bindings:
      - {name: mother_child, authorizer: HZ-MOTHER, member: HZ-CHILD, relation: child, day_cap: "200.00"}
    timeline:
      - name: buy
        at: "2026-03-02 10:00:00"
        visit: {person: HZ-CHILD, facility: PHZ000000001, kind: pharmacy,
                items: [{code: XB02, price: "40.00"}, {code: XA01, price: "20.00"}]}
        expect: {status: settled, acct_mulaid_pay: "50.00", psn_cash_pay: "10.00"}

Money is a string with exactly two decimals ("12.30"), ratios are decimal strings ("0.05"): a YAML float
is refused, as on the wire. Business times are 'yyyy-MM-dd HH:mm:ss', Asia/Shanghai.

The modules: model (the pydantic models, the JSON Schema's source), loader (load_scenario: file:line errors,
the flattened timeline, checks across fields), references (`${step.field}` in later steps).
"""
