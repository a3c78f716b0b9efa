"""A CLI run whose own peak memory and CPU time are measured and bounded (issue 12): the child runs
under RLIMIT_CPU (a runaway is killed by the kernel, however busy the machine is) and reports its
own peak RSS (``VmHWM`` of its address space, written at exit). ``ru_maxrss`` would not do: the
kernel folds the forking parent's peak (a test process with torch loaded) into the child's at exec."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

_DRIVER = """import atexit, os, sys
def _peak():
    with open("/proc/self/status") as f:
        kb = next(line for line in f if line.startswith("VmHWM:")).split()[1]
    with open(os.environ["MPTKIT_TEST_PEAK"], "w") as out:
        out.write(kb)
atexit.register(_peak)
from mptkit.cli import main
main(prog_name="mptkit")
"""


@dataclass
class Measured:
    returncode: int
    stdout: str
    stderr: str
    peak_rss_mb: float
    cpu_s: float


def run_measured(
    *args, cpu_limit_s: int = 60, address_space: int | None = None, cwd=None, env=None, wall_limit_s: float = 300
) -> Measured:
    """``python -m mptkit ARGS`` with at most ``cpu_limit_s`` CPU seconds (SIGXCPU past it: the
    return code is then -SIGXCPU) and optionally an address-space limit. A child blocked without
    using CPU (a hang) is killed after ``wall_limit_s``, a safety net far above any real run."""
    import threading

    def limits():
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_limit_s, cpu_limit_s + 5))
        if address_space is not None:
            resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    e = dict(os.environ)
    e.update(env or {})
    peak = tempfile.NamedTemporaryFile(prefix="mptkit-peak-", delete=False)
    peak.close()
    e["MPTKIT_TEST_PEAK"] = peak.name
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(
            [sys.executable, "-c", _DRIVER, *map(str, args)],
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            preexec_fn=limits,
            cwd=cwd,
            env=e,
        )
        timer = threading.Timer(wall_limit_s, p.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(p.pid, 0)
        finally:
            timer.cancel()
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        with open(peak.name) as f:
            kb = f.read().strip()
        os.unlink(peak.name)
        return Measured(
            p.returncode,
            out.read(),
            err.read(),
            int(kb) / 1024 if kb else float("nan"),
            usage.ru_utime + usage.ru_stime,
        )


def killed_for_cpu(m: Measured) -> bool:
    return m.returncode in (-signal.SIGXCPU, -signal.SIGKILL)
