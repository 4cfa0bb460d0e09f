"""Whether another job is using the CPU right now, for the commands that time this machine (bench, plan).

The 1-minute load average is not enough: it counts this command's own work just before the timing
(`make bench` prepares its run first, and on a fresh clone that scan left a load of 1.09 on an otherwise
idle 2-core machine, so the benchmark warned about itself). On Linux the busy cores are read from
/proc/stat over a short window, less what this process itself used in it; elsewhere the load average
stands in.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

# the same `make bench` measured x2.60 training speed-up on a quiet 2-core machine and x1.09 with another
# process on the cores: half a core taken by others already makes the timings low and noisy
BUSY_CORES_PER_CORE = 0.5
WINDOW_S = 1.0
_PROC_STAT = Path("/proc/stat")


def _busy_cpu_s() -> float | None:
    """CPU seconds the whole machine has spent busy (not idle or waiting on I/O), from the first line of
    /proc/stat; None where there is no /proc/stat."""
    try:
        fields = _PROC_STAT.read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    # steal counts as busy: a hypervisor taking the cores away slows the timings as much as a neighbour
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def others_busy_cores(busy_s: float, own_s: float, wall_s: float) -> float:
    """How many cores other processes kept busy in a window of `wall_s` seconds in which the machine was
    busy for `busy_s` CPU seconds and this process used `own_s` of them."""
    return max(0.0, (busy_s - own_s) / wall_s) if wall_s > 0 else 0.0


def machine_load(window_s: float = WINDOW_S) -> dict:
    """The cores other processes are using now (measured over `window_s`), the 1-minute load average,
    and whether the machine counts as busy for timing."""
    cores = os.cpu_count() or 1
    load_average = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else 0.0  # none on Windows
    busy_before, own_before, start = _busy_cpu_s(), _own_cpu_s(), time.monotonic()
    if busy_before is None:
        return {"load_average_1min": load_average, "cores": cores, "busy": load_average > BUSY_CORES_PER_CORE * cores}
    time.sleep(window_s)
    others = others_busy_cores(_busy_cpu_s() - busy_before, _own_cpu_s() - own_before, time.monotonic() - start)
    return {
        "others_busy_cores": round(others, 2),
        "load_average_1min": load_average,
        "cores": cores,
        "busy": others > BUSY_CORES_PER_CORE * cores,
    }


def busy_warning(load: dict) -> str:
    """The line to print before timings taken on a busy machine."""
    used = (
        f"other processes are using {load['others_busy_cores']:.1f} of {load['cores']} cores"
        if "others_busy_cores" in load
        else f"load average {load['load_average_1min']} on {load['cores']} cores"
    )
    return f"warning: {used}: another job is running, so these timings will be low and noisy"
