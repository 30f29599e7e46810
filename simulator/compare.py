"""Policy what-if: `gongji compare SCENARIO --policy A --policy B` runs one scenario (same seed, same population,
same visits) under two policy sets and reports how families' out-of-pocket and the pooled fund's spending differ.

A policy set is either a directory of policy files (<admdvs>.yaml, as in policies/), or a what-if file that
changes a few numbers of a base directory:

    description: Hangzhou outpatient deductible 600 → 300 for the employed
    base: null                 # a directory relative to this file; null: the default policies/
    set:
      "330100":
        benefits.outpatient.deductible.employed: "300.00"

Each run gets its own workers with GONGJI_POLICY_DIR pointing at its set.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from contracts.money import from_fen

from .databases import throwaway
from .errors import EXIT_INVALID, run_guarded
from .figures import totals
from .published import SCHEMA_VERSION, snake, yuan
from .report import _e, _table, dumps, family_figures, sources
from .run.command import options_from
from .run.orchestration import RunResult, run_loaded
from .scenario.loader import ScenarioError, load_scenario
from .terminal import Progress, table


class PolicySet:
    def __init__(self, spec: str):
        self.spec = spec
        self.path = Path(spec)
        self.label = self.path.stem if self.path.is_file() else self.path.name or spec
        self._tmp: Path | None = None
        self.description = ""

    def __enter__(self) -> Path:
        from services.shared.policy import DEFAULT_POLICY_DIR, load_policies, policy_dir
        if self.path.is_dir():
            load_policies(self.path)  # fail early on a broken file
            return self.path.resolve()
        if not self.path.is_file():
            raise SystemExit(f"--policy {self.spec}: neither a directory of policy files nor a what-if file")
        spec = yaml.safe_load(self.path.read_text(encoding="utf-8")) or {}
        if not isinstance(spec, dict) or not isinstance(spec.get("set", {}), dict):
            raise SystemExit(f"{self.path}: a what-if file has `base:` and `set: {{admdvs: {{dotted.key: value}}}}`")
        self.description = str(spec.get("description", ""))
        base = (self.path.parent / spec["base"]).resolve() if spec.get("base") else policy_dir() or DEFAULT_POLICY_DIR
        self._tmp = Path(tempfile.mkdtemp(prefix="gongji-policy-"))
        for f in sorted(Path(base).glob("*.yaml")):
            shutil.copy(f, self._tmp / f.name)
        for admdvs, changes in (spec.get("set") or {}).items():
            target = self._tmp / f"{admdvs}.yaml"
            if not target.exists():
                raise SystemExit(f"{self.path}: no policy {admdvs}.yaml in {base}")
            data = yaml.safe_load(target.read_text(encoding="utf-8"))
            for dotted, value in (changes or {}).items():
                node = data
                parts = str(dotted).split(".")
                for part in parts[:-1]:
                    if not isinstance(node, dict) or part not in node:
                        raise SystemExit(f"{self.path}: {admdvs}: no {dotted} in the base policy")
                    node = node[part]
                node[parts[-1]] = value
            target.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
        try:
            load_policies(self._tmp)
        except Exception as exc:
            raise SystemExit(f"{self.path}: the changed policies are not valid: {exc}") from None
        return self._tmp

    def __exit__(self, *exc: object) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)


def add_arguments(p: Any) -> None:
    import os
    p.add_argument("scenario", help="a scenario file (YAML)")
    p.add_argument("--policy", action="append", required=True,
                   help="a policy set: a directory of <admdvs>.yaml files, or a what-if file (give two)")
    p.add_argument("--report-dir", default=None, help="default reports/<scenario>-compare")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--scale", default=os.environ.get("GONGJI_SCALE"))
    p.add_argument("--amqp-url", default=os.environ.get("AMQP_URL"))
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--quiet", action="store_true")


def main(args: Any) -> int:
    if len(args.policy) != 2:
        print("give exactly two policy sets: --policy A --policy B", file=sys.stderr)
        return EXIT_INVALID
    try:
        loaded = load_scenario(args.scenario, scale=args.scale, seed=args.seed)
    except ScenarioError as exc:
        print(f"invalid scenario:\n{exc}", file=sys.stderr)
        return 2
    out_dir = Path(args.report_dir) if args.report_dir else Path("reports") / f"{loaded.scenario.name}-compare"
    sets = [PolicySet(s) for s in args.policy]
    if sets[0].label == sets[1].label:
        sets[1].label += "-2"
    problems = []
    for ps in sets:  # every input checked before anything runs
        try:
            with ps:
                pass
        except SystemExit as exc:
            problems.append(str(exc.code))
        except Exception as exc:  # noqa: BLE001 - a broken policy file, in one line
            problems.append(f"--policy {ps.spec}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    if problems:
        print("gongji compare: " + "\n".join(problems), file=sys.stderr)
        return EXIT_INVALID
    results: list[RunResult] = []
    base_url = os.environ.get("GONGJI_DATABASE_URL") or None  # each policy set on a database of its own
    for ps in sets:
        with ps as pdir, throwaway(base_url, prefix="gongji_compare_"):
            args.external, args.namespace, args.policy_dir, args.keep_data = False, None, None, False
            opts = options_from(_ns(args, policy=str(pdir)))
            opts.report_dir = out_dir / ps.label
            progress = Progress(enabled=not args.quiet)
            progress.message(f"— policy set {ps.label} ({ps.spec})")
            code, result, message = run_guarded(lambda: run_loaded(loaded, opts, progress), opts.amqp_url)
            if result is None:
                print(f"gongji compare: {message}", file=sys.stderr)
                return code
            results.append(result)
    cmp = compare(loaded.scenario.name, sets, results)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "compare.json").write_text(dumps(cmp), encoding="utf-8")
    (out_dir / "compare.html").write_text(render_html(cmp), encoding="utf-8")
    print(text_table(cmp))
    print(f"  report: {out_dir}/compare.json, {out_dir}/compare.html (and each run's report in "
          f"{out_dir}/{sets[0].label}, {out_dir}/{sets[1].label})")
    broken = [ps.label for ps, r in zip(sets, results) if any(v != "ok" for v in r.invariants.values())]
    if broken:
        print(f"invariants failed under: {', '.join(broken)}", file=sys.stderr)
        return 1
    return 0


class _ns:
    def __init__(self, args: Any, **over: Any):
        self.__dict__.update(vars(args))
        self.__dict__.update(over)


def compare(name: str, sets: list[PolicySet], results: list[RunResult]) -> dict[str, Any]:
    a, b = results
    ta, tb = totals(a.data.observations), totals(b.data.observations)
    fa, fb = family_figures(a.data), family_figures(b.data)
    # key (stable, snake_case) → (display label, A, B)
    metrics = {
        "pooled_fund": ("pooled fund 统筹基金 (hifp_pay)", ta["hifp_pay"], tb["hifp_pay"]),
        "family_out_of_pocket": ("family out-of-pocket 个人负担 (accounts + cash)",
                                 ta["acct_pay"] + ta["psn_cash_pay"], tb["acct_pay"] + tb["psn_cash_pay"]),
        "personal_accounts": ("  from personal accounts (acct_pay)", ta["acct_pay"], tb["acct_pay"]),
        "family_mutual_aid": ("  of which family mutual aid (acct_mulaid_pay)", ta["acct_mulaid_pay"],
                              tb["acct_mulaid_pay"]),
        "cash": ("  cash (psn_cash_pay)", ta["psn_cash_pay"], tb["psn_cash_pay"]),
        "bill": ("bill (medfee_sumamt)", ta["medfee_sumamt"], tb["medfee_sumamt"]),
    }
    fams = sorted(set(fa) | set(fb))
    zero = {"medfee": 0, "pooled": 0, "out_of_pocket": 0, "cash": 0, "mulaid": 0}
    deltas = []
    for fam in fams:
        x, y = fa.get(fam, zero), fb.get(fam, zero)
        deltas.append({"family": fam, "out_of_pocket_a": _y(x["out_of_pocket"]), "out_of_pocket_b": _y(y["out_of_pocket"]),
                       "delta_out_of_pocket": _y(y["out_of_pocket"] - x["out_of_pocket"]),
                       "cash_a": _y(x["cash"]), "cash_b": _y(y["cash"]), "delta_cash": _y(y["cash"] - x["cash"]),
                       "pooled_a": _y(x["pooled"]), "pooled_b": _y(y["pooled"]),
                       "delta_pooled": _y(y["pooled"] - x["pooled"]),
                       "_d": y["out_of_pocket"] - x["out_of_pocket"]})
    better = sum(1 for d in deltas if d["_d"] < 0)
    worse = sum(1 for d in deltas if d["_d"] > 0)
    top = sorted(deltas, key=lambda d: (-abs(d["_d"]), d["family"]))[:20]
    for d in deltas:
        d.pop("_d")
    return {
        "scenario": name,
        "policy_sets": [{"label": ps.label, "spec": ps.spec, "description": ps.description} for ps in sets],
        "schema_version": SCHEMA_VERSION,
        "money_unit": "yuan",  # every money value: a JSON number, at most 2 decimals
        "metrics": {k: {"label": label.strip(), "a": _y(x), "b": _y(y), "delta": _y(y - x)}
                    for k, (label, x, y) in metrics.items()},
        "families": {"count": len(fams), "pay_less_under_b": better, "pay_more_under_b": worse,
                     "unchanged": len(fams) - better - worse},
        "largest_family_changes": top,
        "sources": {"a": {snake(k): _y(v) for k, v in sources(a.data.observations).items()},
                    "b": {snake(k): _y(v) for k, v in sources(b.data.observations).items()}},
        "source_labels": {snake(k): k for k in sources(a.data.observations)},
        "runs": [{"label": ps.label, "expectations": r.report["expectations"]["failed"] == 0,
                  "invariants": r.report["invariants"]} for ps, r in zip(sets, results)],
    }


def _y(fen: int) -> float:
    return float(from_fen(fen))  # published money: a JSON number in yuan


def text_table(cmp: dict[str, Any]) -> str:
    a, b = (ps["label"] for ps in cmp["policy_sets"])
    lines = [f"policy what-if for {cmp['scenario']}: A = {a}, B = {b}", ""]
    sub = ("from", "of which", "cash")
    lines.append(table(("", "A", "B", "B - A"), [(("  " if v["label"].startswith(sub) else "") + v["label"],
                                                   yuan(v["a"]), yuan(v["b"]), yuan(v["delta"]))
                                                  for v in cmp["metrics"].values()], right={1, 2, 3}))
    f = cmp["families"]
    lines += ["", f"  families: {f['count']}; pay less under B: {f['pay_less_under_b']}, more: {f['pay_more_under_b']}, "
                  f"unchanged: {f['unchanged']}"]
    if cmp["largest_family_changes"]:
        lines.append(table(("family", "out-of-pocket A", "B", "B - A", "pooled B - A"),
                           [(d["family"][:30], yuan(d["out_of_pocket_a"]), yuan(d["out_of_pocket_b"]),
                             yuan(d["delta_out_of_pocket"]), yuan(d["delta_pooled"]))
                            for d in cmp["largest_family_changes"][:10]], right={1, 2, 3, 4}))
    for r in cmp["runs"]:
        bad = [k for k, v in r["invariants"].items() if v != "ok"]
        lines.append(f"  run {r['label']}: invariants {'ok' if not bad else 'FAILED: ' + ', '.join(bad)}"
                     + ("" if r["expectations"] else " (some scenario expectations differ under this policy set)"))
    return "\n".join(lines)


def render_html(cmp: dict[str, Any]) -> str:
    a, b = (ps["label"] for ps in cmp["policy_sets"])
    rows = [[_e(v["label"]), _e(yuan(v["a"])), _e(yuan(v["b"])), _e(yuan(v["delta"]))]
            for v in cmp["metrics"].values()]
    fam_rows = [[_e(d["family"]), _e(yuan(d["out_of_pocket_a"])), _e(yuan(d["out_of_pocket_b"])),
                 _e(yuan(d["delta_out_of_pocket"])), _e(yuan(d["delta_cash"])), _e(yuan(d["delta_pooled"]))]
                for d in cmp["largest_family_changes"]]
    names = cmp.get("source_labels", {})
    bars = {"keys": list(cmp["sources"]["a"]), "labels": [names.get(k, k) for k in cmp["sources"]["a"]],
            "a": cmp["sources"]["a"], "b": cmp["sources"]["b"], "names": [a, b]}
    payload = json.dumps(bars, ensure_ascii=False, sort_keys=True).replace("</", "<\\/")
    descs = "".join(f"<li><b>{_e(ps['label'])}</b>: {_e(ps['spec'])} {_e(ps['description'])}</li>"
                    for ps in cmp["policy_sets"])
    return f"""<!DOCTYPE html>
<html lang="zh-CN"><head><meta charset="utf-8"><title>gongji what-if — {_e(cmp['scenario'])}</title>
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<style>body{{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1d2430}}table{{border-collapse:collapse}}
th,td{{border-bottom:1px solid #e6e9ee;padding:4px 10px;text-align:right}}th:first-child,td:first-child{{text-align:left}}
section{{margin-bottom:22px}}.legend span{{display:inline-block;margin-right:14px}}
.legend i{{display:inline-block;width:11px;height:11px;margin-right:5px;border-radius:2px;vertical-align:-1px}}</style></head>
<body data-report-ready="no"><h1>Policy what-if: {_e(cmp['scenario'])}</h1><ul>{descs}</ul>
<section><h2>Totals (yuan, net of reversals)</h2>{_table(["", "A " + a, "B " + b, "B − A"], rows, {1, 2, 3})}</section>
<section><h2>Where each yuan came from</h2><div id="chart"></div></section>
<section><h2>Families: {cmp['families']['pay_less_under_b']} pay less under B, {cmp['families']['pay_more_under_b']} more,
{cmp['families']['unchanged']} unchanged — the largest changes</h2>
{_table(["family", "out-of-pocket A", "out-of-pocket B", "Δ out-of-pocket", "Δ cash", "Δ pooled"], fam_rows,
        {1, 2, 3, 4, 5})}</section>
<script type="application/json" id="cmp-data">{payload}</script>
<script>
(function(){{"use strict";var NS="http://www.w3.org/2000/svg";var COLORS=["#2f6db3","#e0a030"];
try{{var d=JSON.parse(document.getElementById("cmp-data").textContent);
var leg=document.createElement("div");leg.className="legend";d.names.forEach(function(n,j){{
var s=document.createElement("span");var c=document.createElement("i");c.style.background=COLORS[j];
s.appendChild(c);s.appendChild(document.createTextNode((j?"B ":"A ")+n));leg.appendChild(s);}});
document.getElementById("chart").appendChild(leg);
var W=960,H=20+d.keys.length*44,L=230,VAL=210,BAR=W-L-VAL;
var max=1;d.keys.forEach(function(k){{max=Math.max(max,Math.abs(d.a[k]),Math.abs(d.b[k]));}});
var svg=document.createElementNS(NS,"svg");svg.setAttribute("viewBox","0 0 "+W+" "+H);svg.setAttribute("width","100%");
svg.setAttribute("class","chart-rendered");
function add(tag,at){{var e=document.createElementNS(NS,tag);for(var k in at){{e.setAttribute(k,at[k]);}}svg.appendChild(e);return e;}}
d.keys.forEach(function(k,i){{var y=10+i*44;var t=add("text",{{x:4,y:y+20,"font-size":12}});t.textContent=d.labels[i];
[["a",0],["b",1]].forEach(function(p){{var v=Math.max(0,d[p[0]][k]);
add("rect",{{x:L,y:y+p[1]*18,width:BAR*v/max,height:16,fill:COLORS[p[1]]}});
var s=add("text",{{x:L+BAR*v/max+4,y:y+p[1]*18+12,"font-size":11}});
s.textContent=(p[1]?"B ":"A ")+v.toFixed(2);}});}});
document.getElementById("chart").appendChild(svg);document.body.setAttribute("data-report-ready","ok");}}
catch(e){{document.body.setAttribute("data-report-error",String(e));throw e;}}}})();
</script></body></html>
"""


__all__ = ["compare", "main", "add_arguments", "PolicySet"]
