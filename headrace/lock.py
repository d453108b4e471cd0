"""One run per date and output at a time: a lock object next to the staging area.

``OUT/_staging/ds=D.lock`` holds the host, pid and run id of the run working on that
date, and the time of its last heartbeat, which the run rewrites every ``heartbeat_s``.
It is created with the store's create-only operation (O_EXCL on a disk, If-None-Match
on S3, ifGenerationMatch=0 on GCS), so of two runs starting together one gets it. A
second run finds it and stops before doing anything, unless the lock is stale: its
process is gone (same host) or its heartbeat is older than ``stale_s`` (a driver killed
on another host). So a killed run's retry can go ahead at once, and two schedulers
cannot interleave their files.

A run on another host cannot tell a live holder from a dead one before its heartbeat is
``stale_s`` old: a Kubernetes Job retries a killed pod on a new pod within seconds, and
that retry would be turned away. ``wait_s`` (``headrace.lock_wait_s``) makes a run wait
that long for the lock to be released or go stale before it gives up.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time

from headrace.errors import ConfigError, LockLost, RunInProgress
from headrace.storage import Storage

log = logging.getLogger("headrace")


STALE_S = 180.0  # a holder whose heartbeat is older is taken for gone


def holder_gone(holder: dict, stale_s: float = STALE_S) -> bool:
    """Whether a lock's holder (its document) is gone: no heartbeat for ``stale_s``, or,
    on this host, its process no longer exists."""
    if time.time() - float(holder.get("beat") or 0.0) >= stale_s:
        return True
    return holder.get("host") == socket.gethostname() and not process_exists(int(holder.get("pid") or -1))


class RunLock:
    def __init__(self, storage: Storage, path: str, run_id: str, heartbeat_s: float = 30.0, stale_s: float = STALE_S,
                 wait_s: float = 0.0, poll_s: float = 5.0):
        self.storage, self.path, self.run_id = storage, path, run_id
        self.heartbeat_s, self.stale_s = heartbeat_s, stale_s
        self.wait_s, self.poll_s = wait_s, poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _document(self) -> bytes:
        now = time.time()
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "run_id": self.run_id,
                           "since": self._since, "beat": now}).encode()

    def acquire(self) -> None:
        self._since = time.time()
        try:
            self.storage.makedirs(self.path.rsplit("/", 1)[0])
            self._create()
        except PermissionError as exc:  # the first write of a run: a place it may not write is configuration
            raise ConfigError(f"cannot write the output at {self.path.rsplit('/', 2)[0]}: "
                              f"{exc.strerror or exc}") from None

    def _create(self) -> None:
        for _ in range(2):
            try:
                self.storage.create_only(self.path, self._document())
            except FileExistsError:
                self._take_over_if_stale()
                continue
            self._thread = threading.Thread(target=self._beat, name="headrace-lock", daemon=True)
            self._thread.start()
            return
        raise RunInProgress(f"could not take the run lock {self.path}")

    def refuse_if_held(self) -> None:
        """Raise RunInProgress where a live run holds the lock; take nothing and write
        nothing. A run asks this before it starts Ray, so that a second scheduler's run of
        the date is turned away in a second instead of after a Ray start; ``acquire``
        still decides between two runs that start together. With ``wait_s``, a held lock
        is looked at again every ``poll_s`` until it is released or stale, for that long."""
        deadline = time.monotonic() + self.wait_s
        waiting = False
        while True:
            try:
                self._stale()
                return
            except RunInProgress as held:
                left = deadline - time.monotonic()
                if left <= 0:
                    if waiting:
                        raise RunInProgress(f"{held} (waited {self.wait_s:g} s: headrace.lock_wait_s)") from None
                    raise
                if not waiting:
                    log.warning("%s; waiting up to %g s for it to end or go stale (headrace.lock_wait_s)", held,
                                self.wait_s)
                    waiting = True
                time.sleep(min(self.poll_s, left))

    def _take_over_if_stale(self) -> None:
        if self._stale():
            self.storage.remove(self.path, missing_ok=True)

    def _stale(self) -> bool:
        """Whether there is a lock whose holder is gone; raises RunInProgress where its
        holder is alive."""
        holder = self._holder()
        if holder is None:
            return False  # none, or released meanwhile
        beat = float(holder.get("beat", 0.0))
        if not holder_gone(holder, self.stale_s):
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", beat)))
            raise RunInProgress(
                f"another run ({holder.get('run_id')}, pid {holder.get('pid')} on {holder.get('host')}, "
                f"since {since}) is working on this date's output; wait for it, or remove {self.path} "
                f"if you are sure it is gone"
            )
        return True

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if (self._holder() or {}).get("run_id") != self.run_id:
                    return  # taken over: never write over the new holder's lock (check() says so)
                self.storage.write_bytes(self.path, self._document())
            except Exception:  # noqa: BLE001 - a missed heartbeat is retried at the next one
                pass

    def _holder(self) -> dict | None:
        """The lock's document; None where there is no lock, {} where it cannot be read
        (half-written: a crash while taking it)."""
        try:
            return json.loads(self.storage.read_bytes(self.path))
        except FileNotFoundError:
            return None
        except ValueError:
            return {}

    def check(self) -> None:
        """Raise LockLost unless this run still holds the lock. A run that stalled longer
        than ``stale_s`` (a paused VM, a partitioned node) may have had its lock taken over
        by a retry on another host, which resumed the same staging area; so the run asks
        before it publishes, and publishes nothing if the lock is no longer its own."""
        holder = self._holder()
        if (holder or {}).get("run_id") != self.run_id:
            self._stop.set()
            who = (f"run {holder.get('run_id')}, pid {holder.get('pid')} on {holder.get('host')}" if holder
                   else "no run: the lock is gone" if holder is None else "a lock it cannot read")
            raise LockLost(
                f"this run lost the date's lock {self.path} (now held by {who}): its heartbeat was more than "
                f"{self.stale_s:g} s old, so another run took the date over; nothing was published, the date is "
                "the other run's"
            )

    def release(self) -> None:
        self._stop.set()
        try:
            if json.loads(self.storage.read_bytes(self.path)).get("run_id") == self.run_id:
                self.storage.remove(self.path, missing_ok=True)
        except (OSError, ValueError):
            pass


def process_exists(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
