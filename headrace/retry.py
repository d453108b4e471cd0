"""Retry policy: which failures are worth another try, and the one retry loop that does it.

Stages, sink storage and input listing all retry through ``retrying``, with the same
classification: timeouts, dropped connections, EIO/EAGAIN and 429/5xx answers are
transient; anything else is raised at once.
"""

from __future__ import annotations

import errno
import logging
import time
from typing import Callable, TypeVar

log = logging.getLogger("headrace")
T = TypeVar("T")


class TransientError(Exception):
    """Raise (or subclass) this in a stage for a failure worth retrying: a flaky service."""


# Failures that will not go away on retry, although they are OSErrors.
_PERMANENT_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
_TRANSIENT_ERRNOS = {errno.EAGAIN, errno.EIO, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNABORTED, errno.EBUSY}


def is_transient(exc: BaseException) -> bool:
    """Timeouts, dropped connections, 429 and 5xx answers: worth another try."""
    if isinstance(exc, _PERMANENT_OS_ERRORS):
        return False
    if isinstance(exc, (TransientError, ConnectionError, TimeoutError)):
        return True
    status = getattr(exc, "code", None) or getattr(exc, "status", None)
    if isinstance(status, int) and (status == 429 or 500 <= status < 600):
        return True
    return isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS


def retrying(operation: Callable[[], T], retries: int, backoff_s: float, what: str = "") -> T:
    """operation(), retried ``retries`` times with exponential backoff while it fails transiently.

    The final failure carries a note saying how often it was tried. ``what`` names the
    operation in that note and in a warning logged before each retry.
    """
    for attempt in range(retries + 1):
        try:
            return operation()
        except Exception as exc:  # noqa: BLE001 - classified below
            if attempt == retries or not is_transient(exc):
                if attempt:
                    prefix = f"{what}: " if what else ""
                    exc.add_note(f"{prefix}failed {attempt + 1} times; transient failures were retried")
                raise
            wait = min(backoff_s * 2**attempt, 30.0)
            if what:
                log.warning("%s failed (%s: %s); retrying in %.1f s", what, type(exc).__name__, exc, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")
