"""CPU and memory of processes and of the machine, for the bench's figures (psutil; the two things psutil
does not give, a process's peak RSS and the CPU model, are read from /proc)."""
from __future__ import annotations

import hashlib
import os
import platform
import resource
import subprocess
from pathlib import Path
from typing import Any

import psutil

SYSTEM_CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def proc_cpu_s(pid: int) -> float | None:
    """User + system CPU of the whole process (every thread), in seconds."""
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return t.user + t.system


def proc_detail(pid: int | None) -> dict[str, float]:
    """User and system CPU seconds, voluntary and involuntary context switches (pid None: this process)."""
    if pid is None:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return {"user_s": ru.ru_utime, "sys_s": ru.ru_stime, "vol_cs": ru.ru_nvcsw, "invol_cs": ru.ru_nivcsw}
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            t, cs = proc.cpu_times(), proc.num_ctx_switches()
    except psutil.Error:
        return {}
    return {"user_s": t.user, "sys_s": t.system, "vol_cs": cs.voluntary, "invol_cs": cs.involuntary}


def proc_mem_kb(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (the peak) in kB; psutil has no peak, so that one comes from /proc/<pid>/status."""
    out: dict[str, int] = {}
    try:
        out["VmRSS"] = psutil.Process(pid).memory_info().rss // 1024
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                out["VmHWM"] = int(line.split()[1])
    except (psutil.Error, OSError):
        pass
    return out


def self_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def system_cpu() -> list[float]:
    """The machine's CPU seconds: user nice system idle iowait irq softirq steal."""
    t = psutil.cpu_times()
    return [getattr(t, name, 0.0) for name in SYSTEM_CPU_FIELDS]


def system_cpu_share(a: list[float], b: list[float]) -> dict[str, float]:
    if not a or not b:
        return {}
    d = [y - x for x, y in zip(a, b)]
    total = sum(d) or 1
    return {n: round(v / total, 3) for n, v in zip(SYSTEM_CPU_FIELDS, d)}


def all_process_cpu() -> dict[int, tuple[str, float, float]]:
    """CPU seconds of every process on the machine, to name whoever else was busy during a measurement:
    pid → (name, cpu seconds, start time)."""
    out = {}
    for proc in psutil.process_iter(["name", "cpu_times", "create_time"]):
        t = proc.info["cpu_times"]
        if t is not None:
            out[proc.pid] = (proc.info["name"] or "", t.user + t.system, proc.info["create_time"] or 0.0)
    return out


def other_processes(before: dict[int, tuple[str, float, float]], after: dict[int, tuple[str, float, float]],
                    ours: set[int], seconds: float) -> list[dict[str, Any]]:
    """Processes not ours that used CPU between two snapshots (new ones count from zero)."""
    busy = []
    for pid, (name, cpu, start) in after.items():
        if pid in ours:
            continue
        # same pid and start time: the same process (kernel threads rename themselves as they work)
        used = cpu - (before[pid][1] if pid in before and before[pid][2] == start else 0.0)
        if used >= max(0.05 * seconds, 0.2):
            try:
                cmd = " ".join(psutil.Process(pid).cmdline())
            except psutil.Error:
                cmd = ""
            cmd = cmd.strip() or f"[{name}]"
            busy.append({"pid": pid, "cpu_s": round(used, 2), "cmd": cmd[:120]})
    return sorted(busy, key=lambda b: -b["cpu_s"])[:8]


def find_broker_pid() -> int | None:
    """The RabbitMQ node on this machine (beam.smp), to account for its CPU; None if there is none."""
    best: tuple[int, int] | None = None
    for proc in psutil.process_iter(["name", "cmdline", "memory_info"]):
        info = proc.info
        if info["name"] != "beam.smp" or not any("rabbit" in part for part in info["cmdline"] or ()):
            continue
        rss = info["memory_info"].rss if info["memory_info"] is not None else 0
        if best is None or rss > best[1]:
            best = (proc.pid, rss)
    return best[0] if best else None


def machine_info() -> dict[str, Any]:
    cpu_model = ""
    try:  # psutil does not name the CPU
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu_model": cpu_model,
            "mem_total_gib": round(psutil.virtual_memory().total / 1024 ** 3, 1),
            "python": platform.python_version(), "platform": platform.platform(),
            "loadavg_before": [round(x, 2) for x in os.getloadavg()], **code_version()}


def code_version() -> dict[str, Any]:
    """Which code was measured: the commit and how many files differed from it (read-only git)."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True,
                               timeout=10).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return {}
    digest = hashlib.sha256()
    for path in sorted([*root.glob("services/**/*.py"), *root.glob("contracts/**/*.py"), *root.glob("policies/*.yaml")]):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    code = {"code_sha256_12": digest.hexdigest()[:12]}  # services + contracts + policies as measured
    return {"git_head": head or None, "git_changed_files": len(dirty), **code} if head else code
