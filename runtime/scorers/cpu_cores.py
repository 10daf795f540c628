"""How many cores a CPU scorer has: what ONNX Runtime's default thread count and the lanes go by.

Kept here, below the benchmark (edge_somad/bench/machine.py reads the same count for its machine line),
so the runtime needs nothing from the benchmark.
"""

from __future__ import annotations

import os
from pathlib import Path


def physical_cores(cpuinfo_text: str) -> int | None:
    """Distinct (physical id, core id) pairs in /proc/cpuinfo text; None without those fields (ARM
    kernels omit them): the count is then unknown, never guessed from the logical count."""
    cores: set[tuple[str, str]] = set()
    phys_id = core_id = None
    for line in [*cpuinfo_text.splitlines(), ""]:
        key, _, value = (s.strip() for s in line.partition(":"))
        if not key:  # a blank line ends one processor's block
            if phys_id is not None and core_id is not None:
                cores.add((phys_id, core_id))
            phys_id = core_id = None
        elif key == "physical id":
            phys_id = value
        elif key == "core id":
            core_id = value
    return len(cores) or None


def usable_cpus() -> int:
    """CPUs this process may run on (affinity, a container's cpuset)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_lanes(intra_op_threads: int | None = None, cpuinfo_path: Path = Path("/proc/cpuinfo")) -> int:
    """Lanes for a CPU batch: the session's intra-op threads when set, else what ORT uses by default (one
    thread per physical core), within the CPUs this process may run on."""
    if intra_op_threads is not None and intra_op_threads > 0:
        return int(intra_op_threads)
    text = cpuinfo_path.read_text(errors="replace") if cpuinfo_path.is_file() else ""
    usable = usable_cpus()
    return max(1, min(physical_cores(text) or usable, usable))
