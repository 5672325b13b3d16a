"""benchmarks/launch.py: a command's peak RSS is its own, not that of the large process that started it."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

from launch import command_pid, figures, launched  # noqa: E402

MiB = 1024  # ru_maxrss and the launcher's figures are in KiB

# A parent whose resident set peaked at 300 MiB (then freed) starts a command that touches 40 MiB, directly and
# through the launcher, and prints what wait4 said of each.
PARENT = """
import json, os, subprocess, sys
sys.path.insert(0, sys.argv[1])
from launch import figures, launched
x = b"\\1" * (300 << 20)
del x
cmd = [sys.executable, "-c", "x = b'\\\\1' * (40 << 20); raise SystemExit(3)"]
p = subprocess.Popen(cmd)
_, status, ru = os.wait4(p.pid, 0)
q = subprocess.run(launched(cmd, sys.argv[2]))
print(json.dumps({"direct_kib": ru.ru_maxrss, "launcher_rc": q.returncode, **figures(sys.argv[2])}))
"""


def test_command_reports_its_own_peak_not_its_starters(tmp_path):
    out = subprocess.run([sys.executable, "-c", PARENT, str(BENCH), str(tmp_path / "fig.json")], capture_output=True,
                         text=True, check=True).stdout
    r = json.loads(out)
    assert r["direct_kib"] >= 300 * MiB  # the kernel behaviour the launcher exists for
    assert r["inherited_peak_kib"] >= 300 * MiB
    assert 40 * MiB <= r["peak_rss_kib"] < 100 * MiB
    assert r["launcher_peak_kib"] < 40 * MiB
    assert r["launcher_rc"] == 3  # the command's exit code


def test_sigterm_reaches_the_command_and_figures_are_written(tmp_path):
    fig = tmp_path / "fig.json"
    p = subprocess.Popen(launched([sys.executable, "-c", "import time; time.sleep(60)"], fig))
    for _ in range(500):
        if (pid := command_pid(p.pid)) is not None:
            break
        time.sleep(0.01)
    assert pid is not None and pid != p.pid
    p.terminate()
    assert p.wait(timeout=30) == 128 + 15  # the command died of SIGTERM: the shell's code for it
    assert figures(fig)["pid"] == pid
    assert not os.path.exists(f"/proc/{pid}")
