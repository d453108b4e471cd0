"""The one place that speaks Ray: connect, compile a checked pipeline into a streaming
Dataset, run it, and bring back what the write tasks staged.

source blocks -> one map_batches per stage (tasks, or an actor pool for stages with a
setup()) -> the schema check -> a Datasink whose write tasks stage Parquet files.
Nothing is materialised in between and nothing but file metadata reaches the driver.
No other module imports ray.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import secrets
import signal
import socket
import sys
import threading
import time
import uuid
import warnings

import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.data
from ray.data import ActorPoolStrategy, Datasink, DataContext
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from headrace import loader
from headrace.envelope import describe_exception, envelop
from headrace.errors import STOP_SIGNALS, ConfigError, StageBroken, TaskFailed, raise_terminated
from headrace.isolate import FailureWatch, apply_stage
from headrace.lock import process_exists
from headrace.memory import HeapTrimmer
from headrace.part_writer import PartWriter
from headrace.pipeline import CUT_ROWS, Pipeline
from headrace.progress import Display, Timeline, measure
from headrace.placement import LOCAL_CPU_SLOTS_PER_CORE, Cluster, Master, Placement
from headrace.stage import Stage, StageContext
from headrace.staging import StagedPart
from headrace.storage import probe_write
from headrace.utilisation import Call, Ledger
from headrace.validation import validate_batch

log = logging.getLogger("headrace")
MIN_BLOCKS = 8


def connect(
    master: Master, num_cpus: int | None = None, num_gpus: int | None = None, object_store_memory: int | None = None,
    worker_env: dict[str, str] | None = None,
) -> Cluster:
    """Start or join Ray. Reuses a Ray already initialised in this process (tests, notebooks).

    ``worker_env`` reaches the workers of a cluster through the job's runtime environment;
    a local Ray's workers inherit this process's environment."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # ray.init sets its own SIGTERM handler (sys.exit(15), after a native stack dump); the
    # CLI's handler, an interrupt, is put back (a library caller keeps Ray's).
    main = threading.current_thread() is threading.main_thread()
    stops = {name: signal.getsignal(getattr(signal, name)) for name in STOP_SIGNALS} if main else {}
    if not ray.is_initialized():
        if master.kind == "local":
            # A Ray of its own on this machine takes a token by default and says so on
            # every run; that is not news to the user.
            logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
            _token_without_a_writable_home()
            ray.init(
                address="local",  # always a new embedded Ray, even where a `ray start` cluster runs
                num_cpus=num_cpus or master.cores * LOCAL_CPU_SLOTS_PER_CORE,
                num_gpus=num_gpus,
                object_store_memory=object_store_memory,
                include_dashboard=False,
                logging_level=logging.WARNING,
                log_to_driver=True,
                # Ray retires idle pooled workers mid-run; that exit path rarely aborts in
                # Ray's C++ teardown (absl "Mutex corrupt" / "UnlockSlow is confused",
                # SIGABRT) and prints a crash for a worker that had finished. A local Ray
                # lives for one run: keep its workers until ray.shutdown instead.
                _system_config={"kill_idle_workers_interval_ms": 0},
            )
            _keep_few_sessions(ray._private.worker._global_node.get_session_dir_path())
        else:
            check_master(master.address)
            try:
                ray.init(address=master.address, logging_level=logging.WARNING,
                         runtime_env={"env_vars": worker_env} if worker_env else None)
            except (ConnectionError, ValueError) as exc:
                raise ConfigError(f"cannot connect to Ray at {master.address}: {exc}") from exc
    for name, handler in stops.items():
        if handler is raise_terminated:
            signal.signal(getattr(signal, name), handler)
    resources = ray.cluster_resources()
    cpus = float(resources.get("CPU", 1))
    cores = master.cores if master.kind == "local" and master.cores else max(1, int(cpus))
    return Cluster(cpus=cpus, gpus=float(resources.get("GPU", 0)), cores=cores,
                   object_store=float(resources.get("object_store_memory", 0)),
                   nodes=sum(1 for node in ray.nodes() if node.get("Alive")))


KEPT_SESSIONS = 10  # Ray session folders (logs) of the latest local runs kept for a look after the run
SESSION_MARK = "headrace"  # a file in the session folder of a Ray that headrace started


def _keep_few_sessions(current: str, keep: int = KEPT_SESSIONS) -> None:
    """Mark ``current`` (the session folder of the local Ray this run started) as headrace's,
    and remove such folders beyond the latest ``keep``. Ray never removes them: a nightly
    job left a folder of logs a night under /tmp/ray (up to 8 MB each; 1,941 folders, 766
    MB on the machine that runs this project's tests). Only folders headrace marked, whose
    driver (the pid the folder's name ends with) is gone, are removed: another Ray's, or a
    running one's, never."""
    try:
        with open(os.path.join(current, SESSION_MARK), "w") as mark:
            mark.write(f"{os.getpid()}\n")
        root = os.path.dirname(current)
        ours = []
        for name in os.listdir(root):
            path = os.path.join(root, name)
            pid = name.rsplit("_", 1)[-1]
            if (name.startswith("session_") and path != current and not os.path.islink(path) and pid.isdigit()
                    and os.path.isfile(os.path.join(path, SESSION_MARK)) and not process_exists(int(pid))):
                ours.append(path)
        import shutil

        for path in sorted(ours)[:max(0, len(ours) - (keep - 1))]:  # names sort by their start time
            shutil.rmtree(path, ignore_errors=True)
    except OSError as exc:  # logs are kept rather than a run stopped
        log.debug("old Ray session folders not removed: %s", exc)


def _token_without_a_writable_home() -> None:
    """Ray saves a new local cluster's token in ~/.ray/auth_token. Where the home folder
    cannot be written (a container with a read-only root filesystem, a service user whose
    home is /), ray.init failed with `PermissionError: ~/.ray`: the token of this run's
    own Ray is then given to it in the environment instead (its processes inherit it)."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled" or any(
            os.environ.get(name) for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")):
        return
    folder = os.path.join(os.path.expanduser("~"), ".ray")
    if os.path.exists(os.path.join(folder, "auth_token")):
        return
    try:
        os.makedirs(folder, exist_ok=True)
        probe_write(folder)
    except OSError:
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)


def check_master(address: str) -> None:
    """Fail at once (exit 2) where nothing answers at host:port or the cluster refuses the
    token, instead of Ray's minutes of GCS retries on the console. Joins nothing, so
    --dry-run uses it too."""
    named = address
    if address == "auto":
        address = _auto_address()
    match = re.fullmatch(r"\[?([\w.:-]+?)\]?:(\d+)", address)
    if not match:
        return  # Ray's to interpret
    host, port = match.group(1), int(match.group(2))
    try:
        socket.create_connection((host, port), timeout=10).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        shown = address if named == address else f"{named} ({address})"
        raise ConfigError(f"--master {shown}: nothing answers there ({reason}); is the Ray head running?") from None
    _check_token(address)


def _auto_address() -> str:
    """Where `ray.init(address="auto")` would go: RAY_ADDRESS (set inside a Ray job), else
    the cluster `ray start` last recorded on this machine."""
    from ray._common.utils import get_ray_address_file

    address = os.environ.get("RAY_ADDRESS", "")
    if address and address != "auto":
        return address
    try:
        with open(get_ray_address_file(None)) as handle:
            return handle.read().strip()
    except OSError:
        raise ConfigError(
            "--master auto: no Ray cluster on this machine (RAY_ADDRESS is unset and `ray start` "
            "recorded none); start one, or name the head with --master HOST:PORT"
        ) from None


def _check_token(address: str) -> None:
    """One authenticated call to the head's GCS (as `ray status` makes): a cluster with
    token authentication refuses it at once where the token is missing or wrong, where
    ray.init would retry for minutes."""
    from ray._raylet import GcsClient

    try:
        with _stderr_silenced():  # Ray's C++ client logs the refusal too
            GcsClient(address=address)
    except ray.exceptions.AuthenticationError:
        raise ConfigError(
            f"--master {address}: the cluster refused this driver's authentication token (missing or wrong); "
            "put the cluster's token in ~/.ray/auth_token, or name its file with RAY_AUTH_TOKEN_PATH, "
            "or set RAY_AUTH_TOKEN"
        ) from None
    except Exception:  # noqa: BLE001 - anything else is ray.init's to report
        pass


@contextlib.contextmanager
def _stderr_silenced():
    """Point file descriptor 2 at /dev/null for a moment (native code writes there directly)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def shutdown() -> None:
    """ray.shutdown(), faster for a local Ray: 0.1 s instead of 1.35 s on 2 cores.

    Ray stops the processes it started one after the other, giving each a second after
    SIGTERM; its autoscaler monitor never exits on SIGTERM, so every run waited that
    second. Here the raylet and then the GCS stop gracefully as in Ray (each needs the
    next one alive to exit cleanly: stopped together, they hang), then the rest get
    SIGTERM together and, after 0.2 s, SIGKILL; Ray's reaper goes last, as in Ray."""
    node = getattr(ray._private.worker, "_global_node", None)
    if node is not None and isinstance(getattr(node, "all_processes", None), dict):
        node.kill_all_processes = functools.partial(_stop_quickly, node)
    ray.shutdown()


def kill_local_ray() -> None:
    """SIGKILL what is left of the local Ray this process started (its shutdown was cut short)."""
    node = getattr(ray._private.worker, "_global_node", None)
    for infos in list((getattr(node, "all_processes", None) or {}).values()):
        for info in infos:
            try:
                info.process.kill()
            except Exception:  # noqa: BLE001 - gone already
                pass


def _stop_quickly(node, check_alive: bool = True, allow_graceful: bool = False, wait: bool = False) -> None:
    constants = ray._private.ray_constants
    ordered = [constants.PROCESS_TYPE_RAYLET, constants.PROCESS_TYPE_GCS_SERVER]
    last = constants.PROCESS_TYPE_REAPER
    steps = [[kind] for kind in ordered if kind in node.all_processes]
    steps.append([kind for kind in node.all_processes if kind not in ordered and kind != last])
    steps.append([last] if last in node.all_processes else [])
    for index, kinds in enumerate(steps):
        _stop([info.process for kind in kinds for info in node.all_processes.pop(kind)],
              grace_s=1.0 if index < len(steps) - 2 else 0.2)


def _stop(processes: list, grace_s: float) -> None:
    """SIGTERM to all, SIGKILL to those still running ``grace_s`` later; reap them all."""
    import subprocess

    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + grace_s
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            try:
                process.wait(timeout=1.0)
            except subprocess.TimeoutExpired:  # stuck in the kernel; Ray gives up on it too
                pass


def configure(verbose: bool, object_store_memory: int | None) -> None:
    """Ray Data's settings for this run. Its progress bars, operator dumps and info lines
    are for --verbose; headrace shows its own progress (headrace.progress)."""
    context = DataContext.get_current()
    # Ray Data's own budget, which also holds on a shared cluster; unset means Ray's default.
    limits = context.execution_options.resource_limits
    budget = float("inf") if object_store_memory is None else object_store_memory
    context.execution_options.resource_limits = limits.copy(object_store_memory=budget)
    context.enable_progress_bars = verbose
    context.print_on_execution_start = False
    # Ray Data's log file (ray-data.log in the session's logs) keeps all it logs, as Ray sets
    # it up; the terminal has its lines only with --verbose. Without it a failed task's
    # error is headrace's to print, once, with its traceback: Ray Data's console printed the
    # same trace twice more (a full disk: 245 lines on stderr).
    # Only Ray's own console handler, the one Ray Data's logging config names: any other
    # handler on that logger is someone else's (a test's log capture was silenced too).
    from ray._private.log import PlainRayHandler

    for handler in logging.getLogger("ray.data").handlers:
        if type(handler) is PlainRayHandler:
            handler.setLevel(logging.INFO if verbose else logging.CRITICAL + 1)


class _StageActor:
    """An actor holding one set-up copy of a stateful stage; it reports every call."""

    def __init__(self, stage: Stage, schema: pa.Schema, keys: tuple[str, ...], device: str, threads: int, ledger, watch):
        gpu_ids = tuple(str(g) for g in ray.get_runtime_context().get_accelerator_ids().get("GPU", []))
        self.context = StageContext(device=device, threads=threads, gpu_ids=gpu_ids)
        try:
            stage.start(self.context)
        except Exception as exc:  # noqa: BLE001 - a stage that cannot start is broken, whatever the cause
            error_type, message, trace = describe_exception(exc)
            reason = f"stage {stage.stage_name} failed in setup(): {error_type}: {message}"
            # Ray Data keeps only the text of a failed task's exception: tell the driver directly.
            watch.setup_failed(stage.stage_name, reason, trace)
            raise StageBroken(reason, trace) from None
        self.stage, self.schema, self.keys, self.ledger, self.watch = stage, schema, keys, ledger, watch
        self.ready = time.time()
        self.actor = uuid.uuid4().hex[:8]
        self.trim = HeapTrimmer()
        # An actor that never gets work still counts in the pool.
        ray.get(ledger.record.remote(Call(stage.stage_name, self.actor, self.ready, self.ready, self.ready, 0, None,
                                          gpu_ids, node_name())))

    def __call__(self, batch: pa.Table) -> pa.Table:
        started = time.time()
        forward_before = self.context.timings.get("forward_s")
        result = apply_stage(self.stage, batch, self.schema, self.keys, self.watch)
        forward_after = self.context.timings.get("forward_s")
        forward = None if forward_after is None else forward_after - (forward_before or 0.0)
        done = measure(batch, result)
        call = Call(self.stage.stage_name, self.actor, self.ready, started, time.time(), batch.num_rows, forward,
                    self.context.gpu_ids, node_name(), done.inputs, done.quarantined)
        ray.get(self.ledger.record.remote(call))  # before the batch counts as done (see _counted)
        self.trim()
        return result


@functools.cache
def node_name() -> str:
    """The Ray node this process runs on, as the report names it: ip/first 8 of its id."""
    return f"{ray.util.get_node_ip_address()}/{ray.get_runtime_context().get_node_id()[:8]}"


def _counted(batch, fn, stage: str, ledger):
    """Run a task stage's ``fn`` on ``batch``, telling the ledger where and what it did."""
    result = fn(batch)
    done = measure(batch, result)
    # Waited for: a task's message could otherwise reach the ledger after the driver has
    # read its summary (the manifest's per-node counts came out short on small runs).
    ray.get(ledger.batch.remote(stage, node_name(), done.rows, done.inputs, done.quarantined))
    return result


@ray.remote(num_cpus=0)
class _RunBook:
    """The run's bookkeeping in one actor (one process to start, not two): the Ledger of
    what every task and actor did, and the one FailureWatch they all share."""

    def __init__(self, limit: int):
        self.ledger = Ledger()
        self.watch = FailureWatch(limit)

    # -- the ledger --------------------------------------------------------------

    def record(self, call: Call) -> None:
        self.ledger.record(call)

    def batch(self, stage: str, node: str, rows: int = 0, inputs: float = 0.0, quarantined: int = 0) -> None:
        self.ledger.batch(stage, node, rows, inputs, quarantined)

    def progress(self) -> dict[str, dict]:
        return self.ledger.progress()

    def summary(self) -> tuple[dict, list[dict]]:
        return self.ledger.summary(), self.ledger.node_summary()

    # -- the watch ---------------------------------------------------------------

    def failed(self, stage: str, error_type: str, message: str, traceback: str):
        return self.watch.failed(stage, error_type, message, traceback)

    def succeeded(self, stage: str) -> None:
        self.watch.succeeded(stage)

    def setup_failed(self, stage: str, reason: str, traceback: str) -> None:
        self.watch.setup_failed(stage, reason, traceback)

    def first_broken(self) -> tuple[str, str] | None:
        return next(iter(self.watch.broken.values()), None)


class _RemoteWatch:
    """The shared FailureWatch as seen from a task or actor: successes are told once per copy."""

    def __init__(self, actor):
        self.actor = actor
        self.healthy: set[str] = set()

    def failed(self, stage: str, error_type: str, message: str, traceback: str):
        if stage in self.healthy:
            return None
        return ray.get(self.actor.failed.remote(stage, error_type, message, traceback))

    def succeeded(self, stage: str) -> None:
        if stage not in self.healthy:
            self.healthy.add(stage)
            self.actor.succeeded.remote(stage)

    def setup_failed(self, stage: str, reason: str, traceback: str) -> None:
        ray.get(self.actor.setup_failed.remote(stage, reason, traceback))


def _no_extra_args() -> dict:
    return {}


def block_ranges(count: int, most: int, sizes: list | None = None, block_bytes: int | None = None) -> list[tuple[int, int]]:
    """Consecutive [start, stop) ranges of ``count`` inputs, one per block (a task's work):
    at most ``most`` inputs each and, where ``block_bytes`` and the inputs' sizes are
    given, no more bytes than that, unless one input alone is larger (an input of unknown
    size is a block of its own)."""
    if not block_bytes or sizes is None or len(sizes) != count:
        return [(i, min(count, i + most)) for i in range(0, count, most)]
    ranges, start, total = [], 0, 0
    for i, size in enumerate(sizes):
        size = block_bytes if size is None else size
        if i > start and (i - start >= most or total + size > block_bytes):
            ranges.append((start, i))
            start, total = i, 0
        total += size
    if count:
        ranges.append((start, count))
    return ranges


def build_dataset(pipeline: Pipeline, inputs: pa.Table, placements: list[Placement], ledger, watch,
                  sizes: pa.Array | None = None):
    """The streaming Dataset for ``inputs`` (a table of records from the source), with
    their ``sizes`` in bytes where the source knows them."""
    for module in loader.FILE_MODULES:
        ray.cloudpickle.register_pickle_by_value(module)
    records = envelop(inputs)
    # Small inputs still get enough blocks to keep every actor of a pool busy. A source
    # with ``block_bytes`` (table splits) packs small inputs together up to that size: a
    # Ray task costs about 10 ms here, more than reading a 500-row Parquet row group.
    most = max(1, min(pipeline.source.files_per_block, -(-records.num_rows // MIN_BLOCKS)))
    ranges = block_ranges(records.num_rows, most, None if sizes is None else sizes.to_pylist(),
                          getattr(pipeline.source, "block_bytes", None))
    blocks = [records.slice(start, stop - start) for start, stop in ranges]
    # from_blocks keeps the blocks as they are and computes their metadata here; from_arrow
    # runs a task per block for it (0.4 s of a small run, a worker start included).
    dataset = ray.data.from_blocks(blocks)
    before = None  # the previous op's (num_cpus, memory) where Ray Data may fuse the next op into it
    from_source = True  # whether the ops fused so far start at the source: their input rows are inputs (files)
    stages = pipeline.stages
    cut = None  # rows per block after the last cut
    for index, ((stage, schema), placement) in enumerate(zip(pipeline.stage_schemas(), placements)):
        if index and not stages[index - 1].fuse:
            cut = cut_rows(stages[index:], placements[index:])
            if cut:
                # A stage kept apart (ReadTable) makes one block of all the rows of its task: a
                # row group of 100,000 rows, or a 32 MiB byte range. An actor pool takes a block
                # whole, as one task on one actor, so a run over a few large row groups kept one
                # actor busy while the others idled. Its blocks are cut into blocks of the
                # pool's call size (a streaming repartition: one more task per block, no shuffle).
                # Without a pool after it, blocks stay whole: a task of the stages that follow
                # costs more than they take for a few thousand rows.
                dataset = dataset.repartition(target_num_rows_per_block=cut)
        common = dict(
            batch_size=stage.call_size(placement.device == "cuda"),
            batch_format="pyarrow",
            num_cpus=placement.cpus,
            memory=stage.memory,
            zero_copy_batch=True,
        )
        fused = stage.fuse and not placement.gpus and before == (placement.cpus, stage.memory)
        if fused and placement.actors is not None and from_source:
            # Ray Data fuses the CPU stages before into this pool, and a fused task takes
            # as many *input* rows as the largest batch size of its ops: the model's 64
            # rows would become 64 files per task, so few tasks that the last ones keep
            # one actor busy while the others idle. The pool's calls instead take what
            # the stage before made of one of its batches, whole (the model cuts its own
            # micro-batches by tokens). Not after an op that is not fused from the source
            # (ReadTable): there input rows are records, and a block may be a 65,536-row
            # group, which must not be one call.
            common["batch_size"] = None
        chained = stage.fuse and placement.actors is None
        from_source = from_source and chained and (index == 0 or fused)
        before = (placement.cpus, stage.memory) if chained else None
        if not stage.fuse:
            # Ray Data never fuses an op that has a ray_remote_args_fn (deprecated in Ray
            # 2.60, removed in 2.64: that upgrade needs another way to keep ops apart).
            common["ray_remote_args_fn"] = _no_extra_args
        if placement.actors is None:
            fn = functools.partial(apply_stage, stage, out_schema=schema, keys=pipeline.error_keys, watch=watch)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*ray_remote_args_fn.*deprecated")
                dataset = dataset.map_batches(
                    functools.partial(_counted, fn=fn, stage=stage.stage_name, ledger=ledger), **common
                )
        else:
            low, high = placement.actors
            # No more actors to start with than input blocks: where the stages before are
            # fused into the pool, a block is one call (Ray warns of idle minimum actors);
            # the pool still grows to ``high`` on a backlog. After a cut (above) the pool's
            # blocks are rows, as many as the stage kept apart makes: known for Parquet
            # splits (their footers' row counts), else not clamped.
            if all(s.fuse for s in stages[:index]):
                low = max(1, min(low, len(blocks)))
            elif cut:
                most = blocks_after_cut(records, ranges, getattr(pipeline.source, "rows_column", None), cut)
                low = low if most is None else max(1, min(low, most))
            initial = stage.pool_initial()
            initial = min(max(initial, low), high) if initial is not None else None
            dataset = dataset.map_batches(
                _StageActor,
                fn_constructor_kwargs=dict(
                    stage=stage, schema=schema, keys=pipeline.error_keys,
                    device=placement.device, threads=placement.threads, ledger=ledger, watch=watch,
                ),
                compute=ActorPoolStrategy(min_size=low, max_size=high, initial_size=initial),
                num_gpus=placement.gpus or None,
                **common,
            )
    if pipeline.schema is not None:
        check = functools.partial(validate_batch, pipeline.schema, keys=pipeline.error_keys)
        dataset = dataset.map_batches(
            functools.partial(_counted, fn=check, stage="schema", ledger=ledger),
            batch_format="pyarrow", batch_size=None, num_cpus=0.5,
        )
    return dataset


def cut_rows(stages: list[Stage], placements: list[Placement]) -> int | None:
    """Rows per block after a stage kept apart: the call size of the first actor pool
    among ``stages`` (its ``gpu_batch_size`` on a GPU; ``CUT_ROWS`` for a pool that
    takes whole blocks), or None where no pool follows."""
    for stage, placement in zip(stages, placements):
        if placement.actors is not None:
            return stage.call_size(placement.device == "cuda") or CUT_ROWS
    return None


def blocks_after_cut(records: pa.Table, ranges: list[tuple[int, int]], column: str | None, rows: int) -> int | None:
    """The most blocks a cut into ``rows`` makes of the source blocks ``ranges``, where
    every input says in ``column`` how many rows it holds; else None."""
    if column is None or column not in records.column_names:
        return None
    counts = records.column(column)
    if pc.any(pc.less(counts, 0)).as_py():
        return None
    return sum(max(1, -(-(pc.sum(counts.slice(start, stop - start)).as_py() or 0) // rows))
               for start, stop in ranges)


class StagedParquetDatasink(Datasink):
    """Adapts PartWriter to Ray's Datasink: each write task stages its own files."""

    def __init__(self, writer: PartWriter, rows_per_file: int, ledger):
        self.writer = writer
        self.rows_per_file = rows_per_file
        self.ledger = ledger
        self.parts: list[StagedPart] = []

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_file

    def get_name(self) -> str:
        return "StageParquet"

    def write(self, blocks, ctx) -> StagedPart | None:
        tables = [block for block in blocks if block.num_rows]
        if not tables:
            return None
        self.ledger.batch.remote("write", node_name())
        return self.writer.write(pa.concat_tables(tables), ctx.task_idx)

    def on_write_complete(self, write_result) -> None:
        self.parts = [part for part in write_result.write_returns if part is not None]


def execute(
    pipeline: Pipeline, inputs: pa.Table, placements: list[Placement], writer: PartWriter, broken_after: int,
    progress_every_s: float | None = None, sizes: pa.Array | None = None,
) -> tuple[list[StagedPart], dict, list[dict], list[dict]]:
    """Run the pipeline over ``inputs`` (of ``sizes`` bytes, where known), staging files.

    Returns what every write task staged, the utilisation of each actor-pool stage and
    what ran on each node. Raises StageBroken when a stage fails systematically (see
    headrace.isolate).
    """
    # The run's bookkeeping lives beside the driver: losing a worker node must not lose it
    # (losing the driver's node is what resume is for).
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    ledger = watch_actor = _RunBook.options(scheduling_strategy=here).remote(broken_after)
    _warm.remote(_task_modules(pipeline, placements))
    sink = StagedParquetDatasink(writer, pipeline.sink.rows_per_file, ledger)
    display, stop, timeline = None, threading.Event(), Timeline()
    if progress_every_s is not None:
        names = [stage.stage_name for stage in pipeline.stages] + (["schema"] if pipeline.schema is not None else [])
        display = Display(names, inputs.num_rows, progress_every_s)
    poller = threading.Thread(target=_poll, args=(ledger, display, timeline, stop), name="headrace-progress",
                              daemon=True)
    poller.start()
    try:
        try:
            with warnings.catch_warnings():
                # After a cut over splits whose rows the listing does not know (JSON Lines, CSV,
                # WARC byte ranges) a pool's minimum is not clamped to the blocks it will get: a
                # run of fewer rows than the pool's minimum times its call size leaves a started
                # actor idle, and Ray says so at the end. The report's utilisation shows it.
                warnings.filterwarnings("ignore", message="The minimum number of concurrent actors")
                build_dataset(pipeline, inputs, placements, ledger, _RemoteWatch(watch_actor), sizes).write_datasink(sink)
        except Exception as exc:
            # Ray Data passes on only the text of a task's exception; the watch knows what broke.
            broken = ray.get(watch_actor.first_broken.remote())
            if broken is not None:
                raise StageBroken(*broken) from None
            if isinstance(exc, ray.exceptions.RayTaskError):
                raise TaskFailed(*_task_error(str(exc))) from exc
            raise
        utilisation, nodes = ray.get(ledger.summary.remote())
    finally:
        stop.set()
        poller.join(timeout=15)
        try:
            snapshot = ray.get(ledger.progress.remote(), timeout=10)
            timeline.add(snapshot)
            if display is not None:
                display.update(snapshot)
        except Exception:  # noqa: BLE001 - the run's outcome matters, not its last snapshot
            pass
        if display is not None:
            display.close()
        ray.kill(ledger)
    return sink.parts, utilisation, nodes, timeline.samples


@ray.remote(num_cpus=0)
def _warm(modules: list[str]) -> None:
    """Import what the run's tasks will import, on a worker that then runs them.

    The first schema-check and write tasks otherwise start a worker and import pandera,
    polars and the stages' modules after the model stage has finished: about 1 s of a
    short run, spent here instead while the model actors load on the other cores.
    """
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a warm-up only: the task that needs it reports it
            pass


def _task_modules(pipeline: Pipeline, placements: list[Placement]) -> list[str]:
    modules = [type(stage).__module__ for stage, placement in zip(pipeline.stages, placements)
               if placement.actors is None]
    if pipeline.schema is not None:
        modules.append(type(pipeline.schema).__module__)
    return list(dict.fromkeys([*modules, "pyarrow.parquet", __name__]))


def _poll(ledger, display: Display | None, timeline: Timeline, stop: threading.Event) -> None:
    """Snapshots of the ledger for the display, and every TIMELINE_EVERY_S for the report."""
    every = min(display.every_s, Timeline.every_s) if display is not None else Timeline.every_s
    last_shown = time.monotonic()
    while not stop.wait(every):
        try:
            snapshot = ray.get(ledger.progress.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - a missed snapshot is no reason to disturb the run
            continue
        if stop.is_set():
            return
        timeline.add(snapshot)
        if display is not None and time.monotonic() - last_shown >= display.every_s - 0.01:
            display.update(snapshot)
            last_shown = time.monotonic()


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _task_error(text: str) -> tuple[str, str]:
    """(the user's exception line, its traceback) from the text of a Ray task error, whose
    last line is otherwise Ray Data's advice on retries."""
    first = _ANSI.sub("", text).split("\nThe above exception was the direct cause")[0].strip()
    lines = first.splitlines()
    return f"a task failed: {lines[-1] if lines else 'unknown error'}", _last_lines(lines[1:-1], 3000)


def _last_lines(lines: list[str], limit: int) -> str:
    """The last whole lines of a traceback that fit in ``limit`` characters (before, the
    cut fell mid-line and the detail began with half a file name)."""
    kept, size = [], 0
    for line in reversed(lines):
        size += len(line) + 1
        if size > limit and kept:
            while kept and not kept[-1].lstrip().startswith('File "'):  # start at a frame
                kept.pop()
            kept.append("...")
            break
        kept.append(line)
    return "\n".join(reversed(kept))
