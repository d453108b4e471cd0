"""Keep one known, harmless line of Ray's native code off the user's terminal.

Ray's C++ core worker in the driver writes its ERROR lines straight to file descriptor 2.
Ray Data always passes an actor pool's transform and context to the actors as object-store
references and asks for actor restarts, so Ray 2.60 prints on every run with a model stage

    E ... core_worker.cc:NNNN: Actor with class name: 'MapWorker(...)' ... has constructor
    arguments in the object store and max_restarts > 0 ...

(ray-project/ray#53727). It warns that a restarted actor cannot be rebuilt if those objects
were lost; they are owned by the driver, which headrace keeps alive for the whole run, and
the node-loss test restarts such an actor. The line also stays in Ray's driver log
(``python-core-driver-*.log`` in the session's logs folder).

While a command runs, file descriptor 2 is a pipe into a small filter process that passes
every other byte through. Python's own ``sys.stderr`` (headrace's lines, progress, Ray's
forwarded worker output) keeps writing to the real stderr directly, so terminal detection and
ordering are unchanged. The filter is a process, not a thread: if the driver dies in native
code, what it wrote last (a fatal error, a stack trace) still reaches the terminal.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import sys

NOISE = rb"core_worker\.cc:\d+: Actor with class name: .* has constructor arguments in the object store"

_FILTER = r"""
import os, re
noise = re.compile(%r)
pending = b""
while True:
    try:
        chunk = os.read(0, 65536)
    except InterruptedError:
        continue
    if not chunk:
        break
    lines = (pending + chunk).split(b"\n")
    pending = lines.pop()
    kept = b"".join(line + b"\n" for line in lines if not noise.search(line))
    if kept:
        os.write(1, kept)
if pending and not noise.search(pending):
    os.write(1, pending)
""" % NOISE


@contextlib.contextmanager
def filtered():
    """File descriptor 2 goes through the filter until the block ends; ``sys.stderr`` and
    logging handlers that wrote to it write to the real stderr meanwhile."""
    try:
        sys.stderr.flush()
        real = os.dup(2)
        read_end, write_end = os.pipe()
        child = subprocess.Popen(
            [sys.executable, "-S", "-E", "-c", _FILTER],
            stdin=read_end, stdout=real, stderr=subprocess.DEVNULL,
            close_fds=True, start_new_session=True,  # a Ctrl-C for the driver leaves it draining
        )
    except OSError:  # no filter is better than no run
        yield
        return
    os.close(read_end)
    old_stream = sys.stderr
    stream = io.TextIOWrapper(
        io.FileIO(real, "w", closefd=False), encoding=getattr(old_stream, "encoding", None) or "utf-8",
        errors="backslashreplace", line_buffering=True, write_through=True,
    )
    handlers = [h for h in logging.root.handlers if getattr(h, "stream", None) is old_stream]
    os.dup2(write_end, 2)
    os.close(write_end)
    sys.stderr = stream
    for handler in handlers:
        handler.setStream(stream)
    try:
        yield
    finally:
        stream.flush()
        os.dup2(real, 2)  # closes this process's end of the pipe: the filter drains and exits
        sys.stderr = old_stream
        for handler in handlers:
            handler.setStream(old_stream)
        try:
            child.wait(timeout=5)
        except subprocess.TimeoutExpired:  # something else still holds the pipe; it drains on its own
            pass
        os.close(real)
