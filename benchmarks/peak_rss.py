"""Run a Python script as ``__main__``; write its peak RSS, read before the interpreter's teardown, to a file.

    python benchmarks/peak_rss.py OUT_FILE script.py [args...]

At exit, the interpreter and torch's shared libraries tear down, and that pages in tens of MB of library code
(file-backed, shared and reclaimable; 17 MB for a bare ``import lightning``, up to 120 MB after training),
which ``wait4`` would count in the process's peak. The peak read here (``VmHWM``, in MB) is the run's own.
"""

from __future__ import annotations

import atexit
import os
import runpy
import sys
from pathlib import Path


def write_peak(out: Path, pid: int) -> None:
    if os.getpid() != pid:  # a forked child (a DataLoader worker) that runs exit handlers
        return
    with open("/proc/self/status") as status:
        kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    out.write_text(f"{kb / 1024:.1f}\n")


if __name__ == "__main__":
    out, script = Path(sys.argv[1]), sys.argv[2]
    atexit.register(write_peak, out, os.getpid())  # registered first, so it runs after every other exit handler
    sys.argv = sys.argv[2:]
    runpy.run_path(script, run_name="__main__")
