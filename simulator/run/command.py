"""`gongji run`: its arguments, options and exit codes."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from .. import junit
from ..errors import EXIT_FAILED, EXIT_INVALID, EXIT_OK, run_guarded
from ..scenario.loader import ScenarioError, load_scenario
from .orchestration import RunOptions, run_loaded
from .summary import summary


# ---- `gongji run` --------------------------------------------------------------------------------------
def add_arguments(p: Any) -> None:
    p.add_argument("scenario", help="a scenario file (YAML), e.g. scenarios/child_paid_by_mother.yaml")
    p.add_argument("--report-dir", default=None, help="where report.json and report.html go "
                                                      "(default reports/<scenario name>)")
    p.add_argument("--seed", type=int, default=None, help="replace the scenario's seed (the generator's only source "
                                                          "of randomness)")
    p.add_argument("--scale", default=os.environ.get("GONGJI_SCALE"),
                   help="multiply the generated population (generator.families) by this, e.g. 0.02 "
                        "(env GONGJI_SCALE; default 1)")
    p.add_argument("--external", action="store_true",
                   help="drive workers that are already running (e.g. docker compose up) instead of starting them; "
                        "people and facilities get a per-run tag so runs never meet")
    p.add_argument("--amqp-url", default=os.environ.get("AMQP_URL"),
                   help="RabbitMQ URL (env AMQP_URL; default: localhost:5672, else a testcontainers RabbitMQ)")
    p.add_argument("--namespace", default=None,
                   help="with --external: the workers' namespace (env GONGJI_NAMESPACE, default gongji); "
                        "otherwise a fresh random one")
    p.add_argument("--policy", default=None, help="a directory of policy files (overrides the scenario's "
                                                  "`policies:` and GONGJI_POLICY_DIR)")
    p.add_argument("--concurrency", type=int, default=64, help="generated visits in flight at once (default 64)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--keep-data", action="store_true", help="keep the workers' temporary data directory")
    p.add_argument("--junit", default=None, metavar="FILE",
                   help="write JUnit XML for CI: one testcase per expectation and per invariant")


def options_from(args: Any) -> RunOptions:
    namespace = args.namespace
    if args.external and namespace is None:
        namespace = os.environ.get("GONGJI_NAMESPACE", "gongji")
    return RunOptions(report_dir=None, seed=args.seed, scale=args.scale, external=args.external,
                      amqp_url=args.amqp_url, namespace=namespace,
                      policy_dir=Path(args.policy) if args.policy else None, concurrency=args.concurrency,
                      progress=not args.quiet, keep_data=args.keep_data)


def main(args: Any) -> int:
    name = Path(args.scenario).stem
    try:
        loaded = load_scenario(args.scenario, scale=args.scale, seed=args.seed)
    except ScenarioError as exc:
        print(f"invalid scenario:\n{exc}", file=sys.stderr)
        if args.junit:
            junit.write(args.junit, junit.error_suite(name, f"invalid scenario:\n{exc}"))
        return EXIT_INVALID
    opts = options_from(args)
    opts.report_dir = Path(args.report_dir) if args.report_dir else Path("reports") / loaded.scenario.name
    code, result, message = run_guarded(lambda: run_loaded(loaded, opts), opts.amqp_url)
    if result is None:
        print(f"gongji run: {message}", file=sys.stderr)
        if args.junit:
            junit.write(args.junit, junit.error_suite(name, message or "did not run"))
        return code
    print(summary(result))
    if args.junit:
        junit.write(args.junit, junit.build(result.report, has_final=loaded.scenario.final is not None))
    return EXIT_OK if result.ok else EXIT_FAILED
