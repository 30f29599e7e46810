"""`gongji run`, one job per module: identities (scenario names → wire names), observations (what a run saw),
runner (population, traffic, timeline), expectations (the step checks), faults (injection and its registry),
orchestration (stack → runner → auditor → report), summary (the printed result), command (the CLI)."""
