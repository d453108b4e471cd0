"""Exceptions that map to the CLI's exit codes."""


class HeadraceError(Exception):
    exit_code = 1


class ConfigError(HeadraceError):
    """Bad configuration or usage, found before any work starts (exit 2)."""

    exit_code = 2


class PipelineError(ConfigError):
    """A pipeline that cannot run as declared (missing column, bad resources)."""


class ConservationError(HeadraceError):
    """The staged output does not account for every input; nothing is published."""


class QualityGateError(HeadraceError):
    """Too many records were quarantined; nothing is published (exit 3)."""

    exit_code = 3


class RunInProgress(HeadraceError):
    """Another run of the same date and output holds its lock; this one did nothing (exit 1)."""


class StageBroken(HeadraceError):
    """A stage fails systematically (a bug, a missing model), not on bad records: the run stops.

    ``str()`` is the one-line reason; ``detail`` holds the first failure's traceback.
    """

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.detail = detail

    def __reduce__(self):
        return (type(self), (str(self), self.detail))
