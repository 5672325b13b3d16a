"""A small launcher: runs a command and writes that command's wait4 figures (CPU seconds, peak RSS) as JSON.

    python -S benchmarks/launch.py OUT.json CMD [ARG ...]

Linux carries ru_maxrss over fork and exec: a new process starts from its parent's peak resident set, so a
command started directly by a benchmark that has grown to 400 MB reports at least 400 MB whatever it used.
Started from this launcher (about 10 MB, stdlib only), a command's ru_maxrss is its own peak, or that of the
largest child it waited for, as long as that is above the launcher's own few MB (`launcher_peak_kib`).
SIGTERM is passed on to the command; the launcher exits with the command's exit code (128 + N when signal N
killed it).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys

HERE = os.path.abspath(__file__)


def launched(cmd: list[str], out: os.PathLike | str) -> list[str]:
    """`cmd` run through the launcher, its figures written to `out`."""
    return [sys.executable, "-S", HERE, str(out), *map(str, cmd)]


def figures(out: os.PathLike | str) -> dict:
    """What the launcher wrote: pid, cpu_s (user + sys) and peak_rss_kib of the command, launcher_peak_kib (its
    own VmHWM) and inherited_peak_kib (its ru_maxrss: what it inherited, the starter's peak when it started the
    launcher, unless its own is larger; what the command would have reported at least without the launcher)."""
    with open(out) as f:
        return json.load(f)


def command_pid(launcher_pid: int) -> int | None:
    """The pid of the command a running launcher started (None before it started or after it ended)."""
    try:
        with open(f"/proc/{launcher_pid}/task/{launcher_pid}/children") as f:
            pids = f.read().split()
    except OSError:
        return None
    return int(pids[0]) if pids else None


def main() -> None:
    out, cmd = sys.argv[1], sys.argv[2:]
    p = subprocess.Popen(cmd)
    signal.signal(signal.SIGTERM, lambda signum, _: p.send_signal(signum))
    _, status, ru = os.wait4(p.pid, 0)
    with open(out, "w") as f:
        json.dump({"pid": p.pid, "cpu_s": ru.ru_utime + ru.ru_stime, "peak_rss_kib": ru.ru_maxrss,
                   "launcher_peak_kib": _hwm_kib(), "inherited_peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}, f)
    code = os.waitstatus_to_exitcode(status)
    sys.exit(code if code >= 0 else 128 - code)  # killed by signal N: 128 + N, as a shell reports it


def _hwm_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:"))


if __name__ == "__main__":
    main()
