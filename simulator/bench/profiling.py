"""py-spy profiles of the workers during the measurement, summarised by area."""
from __future__ import annotations

import asyncio
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any


async def _run_profilers(pids: dict[str, int], out_dir: Path, duration: float, rate: int,
                         gil: bool) -> dict[str, Path]:
    exe = shutil.which("py-spy")
    if exe is None:
        print("  --profile: py-spy is not installed (pip install py-spy); no profile taken", file=sys.stderr)
        return {}
    out_dir.mkdir(parents=True, exist_ok=True)
    procs, files = [], {}
    for name, pid in pids.items():
        path = out_dir / f"{name}.collapsed.txt"
        procs.append(await asyncio.create_subprocess_exec(
            exe, "record", "--pid", str(pid), "--duration", str(max(1, int(duration))), "--rate", str(rate),
            "--format", "raw", "--nonblocking", *(["--gil"] if gil else []), "-o", str(path),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL))
        files[name] = path
    await asyncio.gather(*(p.wait() for p in procs))
    return files


PROFILE_AREAS = [  # (area, substrings of a frame's file); a sample goes to the area of its innermost match
    ("amqp client (aio-pika/aiormq/pamqp)", ("aio_pika/", "aiormq/", "pamqp/")),
    ("pydantic", ("pydantic/", "pydantic_core/")),
    ("json", ("json/",)),
    ("structlog", ("structlog/",)),
    ("thread handoff (executor, futures, locks)", ("concurrent/futures/", "threading.py", "queue.py")),
    ("sqlite & outbox (shared/store.py)", ("shared/store.py", "sqlite3")),
    ("gongji handlers, domain, contracts", ("services/", "contracts/")),
    ("asyncio event loop & socket I/O", ("asyncio/", "selectors.py")),
]


def profile_area(frames: list[str]) -> str:
    for frame in reversed(frames):
        for area, needles in PROFILE_AREAS:
            if any(n in frame for n in needles):
                return area
    return "other"


def summarize_profile(path: Path, top: int = 15) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks, and self time by area."""
    self_s: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    try:
        text = path.read_text()
    except OSError:
        return {}
    for line in text.splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = stack.split(";")
        total += count
        self_s[frames[-1]] += count
        areas[profile_area(frames)] += count
        threads["event loop thread" if frames[0].startswith("_run_module_as_main") else "other threads (store)"] \
            += count
        for f in set(frames):
            incl[f] += count
    if not total:
        return {"samples": 0}
    return {"samples": total,
            "by_area": [(a, round(c / total * 100, 1)) for a, c in areas.most_common()],
            "by_thread": [(t, round(c / total * 100, 1)) for t, c in threads.most_common()],
            "self": [(f, round(c / total * 100, 1)) for f, c in self_s.most_common(top)],
            "inclusive": [(f, round(c / total * 100, 1)) for f, c in incl.most_common(top * 2)]}
