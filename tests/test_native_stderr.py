"""headrace.native_stderr: Ray's known native notice is dropped from file descriptor 2;
everything else written there passes, in order, even when the process dies in native code."""

import subprocess
import sys

from conftest import ROOT

SCRIPT = r"""
import os, sys
from headrace import native_stderr

with native_stderr.filtered():
    os.write(2, b"[2026-11-28 01:00:00,000 E 1 1] core_worker.cc:2465: Actor with class name: 'MapWorker(X)' "
                b"and ID: 'ab' has constructor arguments in the object store and max_restarts > 0. See ...\n")
    os.write(2, b"native line one\n")
    print("python line", file=sys.stderr)
    os.write(2, b"native line two\n")
    assert sys.stderr.isatty() == sys.__stderr__.isatty()
    if sys.argv[1] == "abort":
        os.write(2, b"last words before the abort\n")
        os.abort()
os.write(2, b"after the block\n")
"""


def run(mode):
    return subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_the_known_notice_is_dropped_and_everything_else_passes():
    result = run("exit")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert "constructor arguments" not in result.stderr
    assert [l for l in lines if l.startswith("native")] == ["native line one", "native line two"]
    assert "python line" in lines and lines[-1] == "after the block"


def test_what_a_dying_process_wrote_last_still_arrives():
    result = run("abort")
    assert result.returncode < 0  # SIGABRT
    assert "last words before the abort" in result.stderr and "native line two" in result.stderr
    assert "constructor arguments" not in result.stderr
