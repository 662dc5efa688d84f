"""How many CPU threads a computation uses: never more than the cores other processes leave idle.

torch's OpenMP threads wait for each other at every operation; when one of them is descheduled
because another process holds its core, all of them wait, and a registration runs several times
slower than with fewer threads (benchmarks/README.md, "Threads"; ``benchmark_threads.py``).
So the default is the cores this process may run on less those the rest of the machine keeps
busy, and at least one.
"""

from __future__ import annotations

import os
import time


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the system tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def busy_cores(interval_s: float = 0.1) -> int:
    """Cores other processes keep busy now: the busy share of all cores over ``interval_s``
    (Linux ``/proc/stat``), rounded; where the system does not tell that (macOS, Windows), the
    rounded 1-minute load average, or 1 where neither is known.  The load average is not
    consulted where the sample exists: it lags by a minute, so a run started just after another
    finished counted the finished one and took one thread on an idle machine
    (benchmarks/README.md, "Threads")."""
    try:
        def idle_and_total():
            with open("/proc/stat") as stat:
                values = [int(v) for v in stat.readline().split()[1:]]
            return values[3] + values[4], sum(values)  # idle + iowait

        idle0, total0 = idle_and_total()
        time.sleep(interval_s)
        idle1, total1 = idle_and_total()
        if total1 > total0:
            return round((1 - (idle1 - idle0) / (total1 - total0)) * (os.cpu_count() or 1))
    except (OSError, ValueError, IndexError):
        pass
    if hasattr(os, "getloadavg"):
        return round(os.getloadavg()[0])
    return 1


#: Environment variable capping :func:`default_threads` (the Slicer modules set it for their
#: background runs to leave a core to the GUI: :func:`dmmreg.slicer.background.backend_environment`).
MAX_THREADS_VARIABLE = "DMMREG_MAX_THREADS"


def default_threads() -> int:
    """The usable cores less the busy ones (:func:`busy_cores`, measured before this computation
    starts), at least 1, and at most ``$DMMREG_MAX_THREADS`` where that is set."""
    count = max(1, usable_cores() - busy_cores())
    try:
        cap = int(os.environ.get(MAX_THREADS_VARIABLE, "0"))
    except ValueError:
        cap = 0
    return max(1, min(count, cap)) if cap > 0 else count


def use_threads(threads: int = 0) -> int:
    """Set torch's intra-op threads to ``threads`` (0: :func:`default_threads`); returns the count."""
    import torch

    count = threads if threads > 0 else default_threads()
    torch.set_num_threads(count)
    return count
