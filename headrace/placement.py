"""Where a run executes and how each stage is placed there, decided once before the run.

Nothing here talks to Ray: the adapter (headrace.ray_adapter) connects and reports what
the cluster offers as a ``Cluster``; ``place`` turns that and the pipeline into pools.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass

from headrace.errors import ConfigError
from headrace.pipeline import Pipeline

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
        if value.startswith("ray://"):
            # Ray Data needs a driver with a core worker, which a Ray Client session has not
            # (ray-project/ray#48682: "Ray Client is not supported by Ray Data").
            raise ConfigError(
                f"--master {value}: Ray Data does not run over Ray Client (ray://); give the head's "
                "GCS address (--master HEAD:6379) from a machine that reaches every node, or run on "
                "the cluster with --deploy-mode cluster --master http://HEAD:8265"
            )
        if value == "auto" or re.match(r"^[\w.-]+:\d+$", value):
            return cls("cluster", address=value)
        if value.startswith(("http://", "https://")):
            raise ConfigError(f"--master {value}: a dashboard address goes with --deploy-mode cluster")
        raise ConfigError(f"--master {value!r}: expected local, local[N], auto or HOST:PORT")


def use_ray_token_if_available() -> None:
    """Clusters started with `ray start` take token authentication, and a driver must ask
    for it before Ray is imported. Where a token is at hand (RAY_AUTH_TOKEN,
    RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) and the user said nothing, use it."""
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    available = bool(os.environ.get("RAY_AUTH_TOKEN")) or os.path.isfile(path)
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is None and available:
        os.environ["RAY_AUTH_MODE"] = "token"
    elif mode == "token" and not available:
        # Ray would abort the process (a C++ check) on connecting.
        where = f"RAY_AUTH_TOKEN_PATH={path} does not exist" if "RAY_AUTH_TOKEN_PATH" in os.environ else f"no {path}"
        raise ConfigError(
            f"RAY_AUTH_MODE=token but no token is at hand ({where}, no RAY_AUTH_TOKEN): put the cluster's token "
            "in ~/.ray/auth_token, or name its file with RAY_AUTH_TOKEN_PATH, or set RAY_AUTH_TOKEN"
        )


@dataclass(frozen=True)
class Cluster:
    """What the connected Ray offers, as seen once at start."""

    cpus: float
    gpus: float
    cores: int  # physical cores for CPU model actors to share
    object_store: float = 0.0  # bytes of Ray object store across the cluster
    nodes: int = 1  # alive Ray nodes at start


@dataclass(frozen=True)
class Placement:
    """How one stage runs on this cluster, decided once before the run."""

    stage: str
    actors: tuple[int, int] | None  # None: stateless tasks
    cpus: float
    gpus: float
    device: str
    threads: int
    note: str = ""


def check_local_gpus(pipeline: Pipeline, master: Master, num_gpus: int | None, require_gpu: bool,
                     num_cpus: int | None = None) -> None:
    """Where a local Ray's GPUs are given (``--num-gpus``), a stage that cannot get its GPUs
    (``--require-gpu``, or more GPU actors than GPUs) is exit 2 before Ray starts, not after;
    so are too few CPU slots for the pools and the tasks beside them."""
    if master.kind == "local" and num_gpus is not None:
        cores = master.cores or 1
        place(pipeline, Cluster(cpus=float(num_cpus or cores * LOCAL_CPU_SLOTS_PER_CORE), gpus=float(num_gpus),
                                cores=cores), require_gpu)


def place(pipeline: Pipeline, cluster: Cluster, require_gpu: bool = False) -> list[Placement]:
    """Decide pools and resources for every stage; GPU stages fall back to CPU actors."""
    placements = []
    for stage in pipeline.stages:
        bounds = stage.pool_bounds()
        if stage.gpus and cluster.gpus >= stage.gpus:
            most = int(cluster.gpus // stage.gpus)
            low, high = bounds or (1, most)
            if low > most:
                raise ConfigError(
                    f"stage {stage.stage_name} needs at least {low} actor(s) with gpus={stage.gpus:g} "
                    f"but the cluster has {cluster.gpus:g} GPU(s)"
                )
            placements.append(Placement(stage.stage_name, (low, min(high, most)), stage.cpus, stage.gpus, "cuda", 1))
        elif stage.gpus:
            if require_gpu:
                raise ConfigError(
                    f"stage {stage.stage_name} needs gpus={stage.gpus:g} but the cluster has "
                    f"{cluster.gpus:g} GPU(s) and a GPU is required"
                )
            # One actor per core with one torch thread each: CPU stages with the same
            # resources run fused in these processes, so no core is oversubscribed.
            size = min(bounds[1] if bounds else cluster.cores, cluster.cores)
            threads = stage.cpu_threads or max(1, cluster.cores // size)
            note = (
                f"stage {stage.stage_name} asks for gpus={stage.gpus:g} but the cluster has no GPU: "
                f"running {size} CPU actor(s) with {threads} thread(s) each"
            )
            placements.append(Placement(stage.stage_name, (size, size), 1.0, 0.0, "cpu", threads, note))
        elif stage.stateful:
            low, high = bounds or (1, cluster.cores)
            threads = stage.cpu_threads or max(1, int(stage.cpus))
            placements.append(Placement(stage.stage_name, (low, high), stage.cpus, 0.0, "cpu", threads))
        else:
            placements.append(Placement(stage.stage_name, None, stage.cpus, 0.0, "cpu", max(1, int(stage.cpus))))
    return _leave_cpus_for_tasks(pipeline, cluster, placements)


def _leave_cpus_for_tasks(pipeline: Pipeline, cluster: Cluster, placements: list[Placement]) -> list[Placement]:
    """A stage kept apart (``fuse=False``: ReadTable) runs as tasks beside the actor pools,
    which hold their CPUs for the whole run. Pools that took every CPU slot left those
    tasks waiting for ever: the table job hung at "starting" with --num-cpus 2 here, and
    would on any cluster without GPUs, where a GPU stage's CPU actors are one per CPU.
    Such pools shrink until a task fits beside them; where even one actor each leaves no
    room, it is exit 2."""
    apart = [(stage, placement) for stage, placement in zip(pipeline.stages, placements)
             if not stage.fuse and placement.actors is None]
    if not apart:
        return placements
    task_stage, task = max(apart, key=lambda item: item[1].cpus)
    shrinkable = [i for i, (stage, p) in enumerate(zip(pipeline.stages, placements))
                  if stage.gpus and p.device == "cpu" and p.actors is not None and not stage.pool_bounds()]

    def held() -> float:
        return sum(p.actors[0] * p.cpus for p in placements if p.actors is not None)

    while held() + task.cpus > cluster.cpus and any(placements[i].actors[0] > 1 for i in shrinkable):
        index = max(shrinkable, key=lambda i: placements[i].actors[0])
        stage, old = pipeline.stages[index], placements[index]
        size = old.actors[0] - 1
        # the cores the tasks do not take, shared out (a cluster's actor may be alone on a 1-CPU node)
        threads = stage.cpu_threads or max(1, int(cluster.cores - task.cpus) // size)
        note = (f"stage {stage.stage_name} asks for gpus={stage.gpus:g} but the cluster has no GPU: running {size} "
                f"CPU actor(s) with {threads} thread(s) each (leaving a CPU for the {task_stage.stage_name} tasks)")
        placements[index] = dataclasses.replace(old, actors=(size, size), threads=threads, note=note)
    if held() + task.cpus > cluster.cpus:
        raise ConfigError(
            f"the pipeline needs at least {held() + task.cpus:g} CPU slots, Ray has {cluster.cpus:g}: its actors hold "
            f"{held():g} for the whole run and stage {task_stage.stage_name} runs as tasks beside them "
            f"({task.cpus:g} each), which would wait for ever; give Ray more CPUs (--num-cpus, or a larger cluster)"
        )
    return placements
