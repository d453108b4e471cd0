"""Where a run executes: an embedded local Ray, or an existing cluster."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

from headrace.errors import ConfigError

# Logical CPU slots per core on a local Ray: model actors hold their slot for the whole
# run, so read and decode tasks need slots of their own to make progress.
LOCAL_CPU_SLOTS_PER_CORE = 2
_LOCAL = re.compile(r"^local(\[(\*|\d+)\])?$")


@dataclass(frozen=True)
class Master:
    """A parsed --master value."""

    kind: str  # "local" | "cluster"
    address: str | None = None
    cores: int | None = None  # local only

    @classmethod
    def parse(cls, value: str) -> "Master":
        value = (value or "local").strip()
        match = _LOCAL.match(value)
        if match:
            count = match.group(2)
            cores = (os.cpu_count() or 1) if count in (None, "*") else int(count)
            if cores < 1:
                raise ConfigError(f"--master {value}: need at least one core")
            return cls("local", cores=cores)
        if value == "auto" or value.startswith("ray://") or re.match(r"^[\w.-]+:\d+$", value):
            return cls("cluster", address=value)
        raise ConfigError(f"--master {value!r}: expected local, local[N], auto or ray://host:port")


@dataclass(frozen=True)
class Cluster:
    """What the connected Ray offers, as seen once at start."""

    cpus: float
    gpus: float
    cores: int  # physical cores for CPU model actors to share
    object_store: float = 0.0  # bytes of Ray object store across the cluster


def connect(
    master: Master, num_cpus: int | None = None, num_gpus: int | None = None, object_store_memory: int | None = None
) -> Cluster:
    """Start or join Ray. Reuses a Ray already initialised in this process (tests, notebooks)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if not ray.is_initialized():
        if master.kind == "local":
            ray.init(
                num_cpus=num_cpus or master.cores * LOCAL_CPU_SLOTS_PER_CORE,
                num_gpus=num_gpus,
                object_store_memory=object_store_memory,
                include_dashboard=False,
                logging_level=logging.WARNING,
                log_to_driver=True,
            )
        else:
            try:
                ray.init(address=master.address, logging_level=logging.WARNING)
            except (ConnectionError, ValueError) as exc:
                raise ConfigError(f"cannot connect to Ray at {master.address}: {exc}") from exc
    resources = ray.cluster_resources()
    cpus = float(resources.get("CPU", 1))
    cores = master.cores if master.kind == "local" and master.cores else max(1, int(cpus))
    return Cluster(cpus=cpus, gpus=float(resources.get("GPU", 0)), cores=cores,
                   object_store=float(resources.get("object_store_memory", 0)))

