"""The one way the tests (and benchmarks) measure a process: :func:`run_measured` runs ``python -m
mptkit ARGS`` as a real process and returns its exit status, output, wall time, peak RSS and CPU
time.

The figures are the child's own. A small wrapper interpreter (``python -S``: no site, ~10 MB)
starts the child with ``posix_spawn`` and reads its ``wait4`` rusage: peak RSS (``ru_maxrss``) and
user + system CPU time. The wrapper is what makes ``ru_maxrss`` honest: Linux folds the memory a
process had before ``exec`` into its peak, so a child forked straight from this test process
(torch loaded, hundreds of MB) would report that as its own. rusage also survives a kill, so a run
stopped by a limit still has its figures.

Limits: ``cpu_limit_s`` (RLIMIT_CPU: the kernel sends SIGXCPU past it, SIGKILL 5 s later, however
busy the machine is), ``address_space`` (RLIMIT_AS), and ``wall_limit_s``, a safety net far above
any real run that SIGKILLs a child blocked without using CPU (a hang). Tests never assert the wall
time: they bound CPU and memory, or make the event that ends a run happen by construction.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

# argv: figures-file cpu-limit address-space wall-limit program args...; the limits are inherited
# by the child (RLIMIT_CPU counts each process's own CPU time, and this wrapper uses almost none).
_WRAPPER = """
import os, resource, signal, sys
figures, cpu, space, wall = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
if cpu > 0:
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
if space > 0:
    resource.setrlimit(resource.RLIMIT_AS, (space, space))
pid = os.posix_spawn(sys.argv[5], sys.argv[5:], os.environ)
timed_out = []
def _expire(signum, frame):
    timed_out.append(1)
    os.kill(pid, signal.SIGKILL)
signal.signal(signal.SIGALRM, _expire)
signal.setitimer(signal.ITIMER_REAL, wall)
_, status, ru = os.wait4(pid, 0)
signal.setitimer(signal.ITIMER_REAL, 0)
with open(figures, "w") as f:
    f.write(f"{os.waitstatus_to_exitcode(status)} {ru.ru_maxrss} {ru.ru_utime + ru.ru_stime} {len(timed_out)}")
"""


@dataclass
class Measured:
    returncode: int  # -signal when killed (-SIGXCPU past the CPU limit, -SIGKILL past the wall limit)
    stdout: str
    stderr: str
    wall_s: float
    peak_rss_mb: float  # the child's own peak resident memory
    cpu_s: float  # the child's user + system CPU time
    timed_out: bool  # killed by the wall-clock safety net


def run_measured(
    *args,
    env: dict | None = None,
    cwd=None,
    cpu_limit_s: int | None = 60,
    address_space: int | None = None,
    wall_limit_s: float = 300,
    stdout=None,
) -> Measured:
    """``python -m mptkit ARGS`` in a real process, measured (see the module doc). ``env`` adds to
    this process's environment; ``cpu_limit_s=None`` sets no CPU limit; ``stdout`` (a file or a
    descriptor: /dev/full, a pipe whose reader is gone) replaces the captured stdout, which is then
    empty."""
    e = dict(os.environ)
    e.update(env or {})
    argv = [sys.executable, "-m", "mptkit", *map(str, args)]
    with tempfile.TemporaryDirectory(prefix="mptkit-measured-") as tmp:
        figures = os.path.join(tmp, "figures")
        wrapper = [
            sys.executable,
            "-S",
            "-c",
            _WRAPPER,
            figures,
            str(cpu_limit_s or 0),
            str(address_space or 0),
            str(wall_limit_s),
            *argv,
        ]
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            t0 = time.monotonic()
            p = subprocess.Popen(
                wrapper,
                stdin=subprocess.DEVNULL,
                stdout=out if stdout is None else stdout,
                stderr=err,
                cwd=cwd,
                env=e,
                start_new_session=True,
            )
            try:
                p.wait(timeout=wall_limit_s + 30)
            except subprocess.TimeoutExpired:  # the wrapper itself is stuck: end the whole group
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            wall = time.monotonic() - t0
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
        if os.path.exists(figures):
            code, rss_kb, cpu, timed_out = open(figures).read().split()
            code, peak, cpu_s, timed_out = int(code), int(rss_kb) / 1024, float(cpu), timed_out == "1"
        else:
            code, peak, cpu_s, timed_out = -signal.SIGKILL, float("nan"), float("nan"), True
    return Measured(code, stdout, stderr, wall, peak, cpu_s, timed_out)


def killed_for_cpu(m: Measured) -> bool:
    """Killed by a limit: SIGXCPU past ``cpu_limit_s`` (SIGKILL 5 s later, or by the wall limit)."""
    return m.returncode in (-signal.SIGXCPU, -signal.SIGKILL)
