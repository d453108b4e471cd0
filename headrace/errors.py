"""Exceptions that map to the CLI's exit codes."""


class HeadraceError(Exception):
    """``str()`` is the one-line reason; ``detail`` (a traceback) is printed after it."""

    exit_code = 1

    def __init__(self, message: str = "", detail: str = ""):
        super().__init__(message)
        self.detail = detail

    def __reduce__(self):
        return (type(self), (str(self), self.detail))


class ConfigError(HeadraceError):
    """Bad configuration or usage, found before any work starts (exit 2)."""

    exit_code = 2


class NoInputs(ConfigError):
    """The input exists but holds no matching file (a quiet day); exit 2 unless empty input is allowed."""


class PipelineError(ConfigError):
    """A pipeline that cannot run as declared (missing column, bad resources)."""


class ConservationError(HeadraceError):
    """The staged output does not account for every input; nothing is published."""


class QualityGateError(HeadraceError):
    """Too many records were quarantined; nothing is published (exit 3)."""

    exit_code = 3


class RunInProgress(HeadraceError):
    """Another run of the same date and output holds its lock; this one did nothing (exit 1)."""


class LockLost(HeadraceError):
    """Another run took over this run's lock on the date (this one stalled past the lock's
    staleness): this run publishes nothing; the date is the other run's (exit 1)."""


class StageBroken(HeadraceError):
    """A stage fails systematically (a bug, a missing model), not on bad records: the run stops."""


class TaskFailed(HeadraceError):
    """A task or actor of the run failed outside any record (a contract bug, a crash Ray gave up on)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM: a scheduler stopping the task (Airflow, a Kubernetes pod's eviction, a job's
    timeout); SIGHUP: the terminal or ssh session the run was started from went away.
    Handled as an interrupt: nothing is published, Ray is stopped, exit 130."""

    def __init__(self, message: str, signal_name: str = "SIGTERM"):
        super().__init__(message)
        self.signal_name = signal_name


# A stop signal that comes this soon after the one that stopped the run is the same stop.
STOPPING_S = 30.0
_stopped_at: float | None = None


def raise_terminated(signum, frame) -> None:
    """The CLI's handler of SIGINT, SIGTERM and SIGHUP (see headrace.ray_adapter.connect,
    which keeps it past ray.init): the first stops the run, as KeyboardInterrupt (Ctrl-C) or
    Terminated. Those that follow within STOPPING_S (Ctrl-C pressed again and again, a
    scheduler repeating its SIGTERM) are that same stop and are passed over while the run
    stops: raised again, one broke off whatever the stop was doing (Ray Data's executor
    left running, a second `interrupted` from click). After STOPPING_S a signal stops
    again, should a stop have been swallowed or got stuck."""
    import signal
    import time

    global _stopped_at
    now = time.monotonic()
    if _stopped_at is not None and now - _stopped_at < STOPPING_S:
        return
    _stopped_at = now
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    name = signal.Signals(signum).name
    raise Terminated(f"terminated by {name}", name)


# What the CLI handles as a stop: SIGTERM always; SIGHUP unless it is ignored (nohup,
# which asks the run to outlive its terminal).
STOP_SIGNALS = ("SIGTERM", "SIGHUP")
