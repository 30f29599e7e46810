"""JUnit XML for CI (`gongji run --junit FILE`): one testcase per expectation and per invariant.

A CI server (GitLab, Jenkins, GitHub's test reporters) shows each as a test: expectations are named after
their step (`expectation: buy`), the final checks `expectation: final`, invariants `invariant: <name>`.
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any


def _case(suite: ET.Element, classname: str, name: str, failure: str | None = None, *, kind: str = "failure"
          ) -> None:
    case = ET.SubElement(suite, "testcase", classname=classname, name=name, time="0")
    if failure is not None:
        el = ET.SubElement(case, kind, message=failure.splitlines()[0][:500], type=kind)
        el.text = failure


def build(report: dict[str, Any], *, has_final: bool = False) -> ET.Element:
    scenario = str(report.get("scenario", "scenario"))
    root = ET.Element("testsuites", name="gongji")
    exp = ET.SubElement(root, "testsuite", name=f"{scenario}.expectations")
    failures_by_step: dict[str, list[dict[str, Any]]] = {}
    for f in report.get("expectations", {}).get("failures", []):
        failures_by_step.setdefault(str(f["step"]), []).append(f)

    def text(fs: list[dict[str, Any]]) -> str:
        return "\n".join(f"{f['field']}: expected {json.dumps(f['expected'], ensure_ascii=False)}, got "
                         f"{json.dumps(f['actual'], ensure_ascii=False)} ({f.get('where', '')})" for f in fs)
    seen = set()
    for row in report.get("steps", []):
        if not row.get("expected") and row.get("passed", True):
            continue
        step = str(row["step"])
        seen.add(step)
        fs = failures_by_step.get(step)
        _case(exp, f"{scenario}.expectations", f"expectation: {step}", text(fs) if fs else None)
    for step, fs in failures_by_step.items():  # final, setup: failures without a step row
        if step not in seen:
            seen.add(step)
            _case(exp, f"{scenario}.expectations", f"expectation: {step}", text(fs))
    if has_final and "final" not in seen:
        _case(exp, f"{scenario}.expectations", "expectation: final")
    inv = ET.SubElement(root, "testsuite", name=f"{scenario}.invariants")
    for name, verdict in report.get("invariants", {}).items():
        _case(inv, f"{scenario}.invariants", f"invariant: {name}", None if verdict == "ok" else str(verdict))
    for suite in (exp, inv):
        cases = suite.findall("testcase")
        suite.set("tests", str(len(cases)))
        suite.set("failures", str(sum(1 for c in cases if c.find("failure") is not None)))
        suite.set("errors", str(sum(1 for c in cases if c.find("error") is not None)))
        suite.set("skipped", "0")
        suite.set("time", "0")
    _totals(root)
    return root


def error_suite(scenario: str, message: str) -> ET.Element:
    """The run could not happen (exit code 2 or 3): one errored testcase that says why."""
    root = ET.Element("testsuites", name="gongji")
    suite = ET.SubElement(root, "testsuite", name=f"{scenario}.run", tests="1", failures="0", errors="1",
                          skipped="0", time="0")
    _case(suite, f"{scenario}.run", "run", message, kind="error")
    _totals(root)
    return root


def _totals(root: ET.Element) -> None:
    for key in ("tests", "failures", "errors"):
        root.set(key, str(sum(int(s.get(key, "0")) for s in root.findall("testsuite"))))


def write(path: Path | str, root: ET.Element) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.indent(root)
    path.write_bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n")
