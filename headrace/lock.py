"""One run per date and output at a time: a lock file next to the staging area.

``OUT/_staging/ds=D.lock`` holds the host, pid and run id of the run working on that
date, and the run touches it every ``heartbeat_s``. A second run finds it and stops
before doing anything, unless the lock is stale: its process is gone (same host) or it
has not been touched for ``stale_s`` (a driver killed on another host). So a killed
run's retry can go ahead at once, and two schedulers cannot interleave their files.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time

from headrace.errors import RunInProgress


class RunLock:
    def __init__(self, path: str, run_id: str, heartbeat_s: float = 30.0, stale_s: float = 180.0):
        self.path, self.run_id = path, run_id
        self.heartbeat_s, self.stale_s = heartbeat_s, stale_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        holder = {"host": socket.gethostname(), "pid": os.getpid(), "run_id": self.run_id, "since": time.time()}
        for _ in range(2):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(descriptor, "w") as handle:
                json.dump(holder, handle)
            self._thread = threading.Thread(target=self._beat, name="headrace-lock", daemon=True)
            self._thread.start()
            return
        raise RunInProgress(f"could not take the run lock {self.path}")

    def _take_over_if_stale(self) -> None:
        try:
            with open(self.path) as handle:
                holder = json.load(handle)
            touched = os.path.getmtime(self.path)
        except (OSError, ValueError):
            holder, touched = {}, 0.0  # unreadable or half-written: a crash while taking it
        alive = time.time() - touched < self.stale_s
        if alive and holder.get("host") == socket.gethostname():
            alive = _process_exists(int(holder.get("pid", -1)))
        if alive:
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", touched)))
            raise RunInProgress(
                f"another run ({holder.get('run_id')}, pid {holder.get('pid')} on {holder.get('host')}, "
                f"since {since}) is working on this date's output; wait for it, or remove {self.path} "
                f"if you are sure it is gone"
            )
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        self._stop.set()
        try:
            with open(self.path) as handle:
                mine = json.load(handle).get("run_id") == self.run_id
            if mine:
                os.remove(self.path)
        except (OSError, ValueError):
            pass


def _process_exists(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
