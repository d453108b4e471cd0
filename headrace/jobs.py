"""spark-submit's cluster deploy mode, on Ray Jobs.

``headrace submit --deploy-mode cluster --master http://head:8265 PIPELINE ...`` does not
run the pipeline here: it submits ``headrace submit PIPELINE --master auto ...`` as a Ray
job through Ray's Job Submission SDK, with the pipeline file's folder as the job's working
directory, streams the job's logs and exits with the run's own exit code. The run's
driver then lives on the cluster, so the submitting machine may go away (``--no-wait``).

Settings are resolved and checked here, before anything is submitted, and travel as
explicit ``--conf`` values: the job runs with exactly the configuration that was checked.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shlex
import sys
from dataclasses import dataclass
from typing import Any

from headrace.config import ENGINE_PREFIX, RunConf
from headrace.errors import ConfigError, HeadraceError
from headrace.placement import use_ray_token_if_available

# Never uploaded with the pipeline's folder (Ray also leaves out what .gitignore names).
EXCLUDES = [".venv", "venv", ".git", "__pycache__", "*.pyc", "data", "output", ".pytest_cache"]
# Engine settings that belong to the submitting side, not to the job's own run.
_LOCAL_ONLY = {"master", "num_cpus", "num_gpus", "verbose"}
_DASHBOARD = re.compile(r"^https?://[^/\s]+(/.*)?$")


class JobFailed(HeadraceError):
    """The job ended without a headrace exit code (its runtime environment or entrypoint failed)."""

    exit_code = 1


@dataclass(frozen=True)
class JobSpec:
    entrypoint: str
    runtime_env: dict[str, Any]


def check_dashboard(master: str | None) -> str:
    if not master or not _DASHBOARD.match(master):
        raise ConfigError(
            f"--deploy-mode cluster needs --master http://HEAD:8265 (the Ray dashboard), got {master or 'nothing'}"
        )
    return master.rstrip("/")


def job_spec(pipeline: str, run_conf: RunConf, flags: dict[str, Any]) -> JobSpec:
    """The job that runs ``pipeline`` with ``run_conf`` on the cluster.

    A pipeline file's folder becomes the job's working directory and the file is named
    relative to it; a ``package.module:attr`` pipeline must be installed on the cluster.
    """
    runtime_env: dict[str, Any] = {}
    target = pipeline
    if ":" not in pipeline or os.path.isfile(pipeline):
        path = os.path.abspath(pipeline)
        runtime_env = {"working_dir": os.path.dirname(path), "excludes": EXCLUDES}
        target = os.path.basename(path)
    arguments = ["headrace", "submit", target, "--master", "auto", "--ds", run_conf.ds]
    for key in sorted(run_conf.sources):
        if key.startswith(ENGINE_PREFIX):
            name = key[len(ENGINE_PREFIX):]
            if name in _LOCAL_ONLY:
                continue
            value = getattr(run_conf.engine, name)
        else:
            value = run_conf.settings[key]
        if value is not None:
            arguments += ["--conf", f"{key}={_text(value)}"]
    if flags.get("verbose"):
        arguments.append("--verbose")
    return JobSpec(shlex.join(arguments), runtime_env)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class Jobs:
    """Ray's Job Submission SDK for one dashboard address, with headrace's exit codes."""

    def __init__(self, master: str | None):
        self.address = check_dashboard(master)
        use_ray_token_if_available()  # before Ray is imported: the SDK sends the token where asked
        from ray.job_submission import JobSubmissionClient

        # The SDK's own INFO lines (uploading, websocket closed) are not the run's news.
        logging.getLogger("ray.dashboard").setLevel(logging.WARNING)

        try:
            self.client = JobSubmissionClient(self.address)
        except ConnectionError as exc:
            raise ConfigError(f"--master {self.address}: no Ray dashboard answers there ({_first_line(exc)})") from None
        except Exception as exc:  # noqa: BLE001 - authentication and version errors: say so, exit 2
            raise ConfigError(f"--master {self.address}: {type(exc).__name__}: {_first_line(exc)}") from None

    def submit(self, spec: JobSpec, name: str) -> str:
        try:
            return self.client.submit_job(
                entrypoint=spec.entrypoint, runtime_env=spec.runtime_env or None, metadata={"headrace": name},
            )
        except RuntimeError as exc:
            raise ConfigError(f"the cluster refused the job: {_first_line(exc)}") from None

    def follow(self, submission_id: str, out=None) -> int:
        """Print the job's logs as they come, until it ends; return its exit code."""
        out = out or sys.stdout

        async def tail() -> None:
            async for lines in self.client.tail_job_logs(submission_id):
                out.write(lines)
                out.flush()

        asyncio.run(tail())
        return self.exit_code(submission_id)

    def exit_code(self, submission_id: str) -> int:
        info = self.info(submission_id)
        status = str(info.status)
        if status == "SUCCEEDED":
            return 0
        if info.driver_exit_code is not None:
            return int(info.driver_exit_code)
        if status == "STOPPED":
            raise JobFailed(f"job {submission_id} was stopped")
        raise JobFailed(f"job {submission_id} {status.lower()}: {info.message}")

    def info(self, submission_id: str):
        try:
            return self.client.get_job_info(submission_id)
        except RuntimeError as exc:
            raise ConfigError(f"job {submission_id}: {_first_line(exc)}") from None

    def logs(self, submission_id: str) -> str:
        self.info(submission_id)  # an unknown id is exit 2, not a traceback
        return self.client.get_job_logs(submission_id)

    def stop(self, submission_id: str) -> bool:
        self.info(submission_id)
        return self.client.stop_job(submission_id)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
