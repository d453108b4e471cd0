"""Running a pipeline for one logical date: list, place, execute, commit.

The order of a run, and where each step lives:

1. list the inputs (headrace.source) - a bad input fails here, before Ray starts
2. connect and place the stages (headrace.ray_adapter, headrace.placement)
3. take the date's lock (headrace.lock), prepare the staging area and find what a
   killed attempt already staged (headrace.staging, headrace.fingerprint)
4. execute the rest (headrace.ray_adapter; write tasks: headrace.part_writer)
5. account, gate, build the manifest once, publish (headrace.commit, headrace.manifest)
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.compute as pc

from headrace import commit, staging
from headrace.config import ENGINE_PREFIX, EngineConf, check_engine, parse_bytes, parse_ds, redacted, use_storage_options
from headrace.errors import NoInputs
from headrace.fingerprint import fingerprint
from headrace.lock import RunLock
from headrace.manifest import build_manifest
from headrace.part_writer import PartWriter
from headrace.pipeline import Pipeline
from headrace.placement import Master, check_local_gpus, place, use_ray_token_if_available

log = logging.getLogger("headrace")


@dataclass
class RunResult:
    manifest: dict[str, Any]

    @property
    def counts(self) -> dict[str, int]:
        return self.manifest["counts"]

    @property
    def partition(self) -> str:
        return self.manifest["partition"]

    @property
    def quarantine(self) -> str:
        return self.manifest["quarantine"]

    @property
    def warnings(self) -> list[str]:
        return self.manifest["warnings"]


def new_run_id() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def run(
    pipeline: Pipeline,
    ds: str | None = None,
    engine: EngineConf | None = None,
    config: dict[str, Any] | None = None,
    code_files: Iterable[str] = (),
) -> RunResult:
    """Run ``pipeline`` for logical date ``ds`` and publish its partition.

    ``code_files`` (the pipeline file) join the fingerprint. Raises ConfigError (nothing
    ran), StageBroken, QualityGateError, ConservationError or any execution error
    (nothing published; the previous partition is untouched).
    """
    engine = engine or EngineConf()
    # From Python any string was taken: ds="2026-13-01" published a partition of no date,
    # "2026/11/01" one in nested folders that no reader of ds=* finds.
    ds = parse_ds(ds, "ds")
    check_engine(engine)  # as the CLI's settings are: from Python num_cpus=0 meant every core, a gate of 7 none
    timings: dict[str, float] = {}
    started = time.perf_counter()
    started_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")

    worker_env = use_storage_options(engine.storage_options)
    listed = list_inputs(pipeline, engine)
    inputs, sizes, warnings = listed.records, listed.sizes, list(listed.warnings)
    timings["list_s"] = time.perf_counter() - started

    run_id = new_run_id()
    master = Master.parse(engine.master)
    store = parse_bytes(engine.object_store_memory) if engine.object_store_memory is not None else None
    if master.kind == "cluster":
        use_ray_token_if_available()
    check_local_gpus(pipeline, master, engine.num_gpus, engine.require_gpu, engine.num_cpus)
    sink, id_column = pipeline.sink, pipeline.keys[0]
    # One run per date and output at a time; a killed run's lock is taken over at once.
    storage = sink.storage()
    sink.check(ds, pipeline.output_schema)  # a file in the way, a Delta table of another schema: exit 2 before Ray
    lock = RunLock(storage, sink.staging(ds) + ".lock", run_id, wait_s=engine.lock_wait_s)
    lock.refuse_if_held()  # a date another run is working on: turned away before Ray starts
    from headrace import ray_adapter  # imports Ray

    cluster = ray_adapter.connect(master, engine.num_cpus, engine.num_gpus, store, worker_env)
    placements = place(pipeline, cluster, engine.require_gpu)
    for note in [p.note for p in placements if p.note]:
        log.warning(note)
        warnings.append(note)
    ray_adapter.configure(engine.verbose, store)
    timings["start_s"] = time.perf_counter() - started - timings["list_s"]

    with lock:
        settings = _settings(config)
        area = staging.StagingArea(storage, sink.staging(ds), sink.compression)
        resumed = staging.prepare(
            area, fingerprint(pipeline, settings, code_files), run_id, engine.resume,
            {"ds": ds, "pipeline": pipeline.name, "config": settings},
        )
        if resumed.discarded:
            log.warning("staged files of an earlier run for ds=%s discarded: %s", ds, resumed.discarded)
        if resumed.parts:
            staging.keep_complete(area, resumed, inputs.column(id_column).to_pylist(), id_column,
                                  quarantine_by_input=pipeline.row_id is None)
        todo = inputs
        if resumed.complete:
            keep = _not_done(inputs, id_column, resumed.complete)
            todo = inputs.filter(keep)
            sizes = sizes.filter(keep) if sizes is not None else None
            log.warning(
                "resuming ds=%s (attempt %d): %d of %d inputs were already staged; processing the other %d",
                ds, resumed.attempt + 1, len(resumed.complete), inputs.num_rows, todo.num_rows,
            )
        log.info("run %s: %d input files -> %s", run_id, todo.num_rows, sink.partition(ds))
        mark = time.perf_counter()
        writer = PartWriter(sink, area.root, resumed.attempt, run_id, pipeline.keys, pipeline.output_schema,
                            pipeline.row_id)
        parts, utilisation, nodes, timeline = ([], {}, [], [])
        if todo.num_rows:
            parts, utilisation, nodes, timeline = ray_adapter.execute(
                pipeline, todo, placements, writer, engine.broken_stage_after,
                engine.progress_every_s if engine.progress else None, sizes,
            )
        parts = resumed.parts + parts
        timings["process_s"] = time.perf_counter() - mark

        mark = time.perf_counter()
        counts = commit.account(parts, inputs, id_column)
        gate = engine.max_quarantine_fraction if engine.max_quarantine_fraction is not None else pipeline.max_quarantine_fraction
        refused, warning = commit.gate(counts, parts, gate)
        if warning:
            log.warning(warning)
            warnings.append(warning)
        files = commit.Layout() if refused else commit.layout(area, parts, pipeline.output_schema, run_id, sink.unique_names)
        timings["commit_s"] = time.perf_counter() - mark
        timings["total_s"] = time.perf_counter() - started
        manifest = build_manifest(
            pipeline=pipeline, engine=engine, run_id=run_id, ds=ds, started_at=started_at, config=recordable_config(config),
            placements=placements, cluster=cluster, utilisation=utilisation, nodes=nodes, timeline=timeline, input_sizes=listed.histogram,
            ignored_inputs=listed.ignored,
            quarantine_causes=commit.quarantine_causes(parts), timings=timings, resumed=resumed,
            processed=todo.num_rows, gate=gate, counts=counts, files=files.files,
            quarantine_files=files.quarantine_files, warnings=warnings,
            status="failed" if refused else "committed",
        )
        lock.check()  # a run that stalled past the lock's staleness may have been taken over: publish nothing
        if refused:
            commit.refuse(area, manifest, refused)
        sink.publish(area, manifest, resumed.run, ds, files, pipeline.output_schema)
        return RunResult(manifest=manifest)


def _settings(config: dict[str, Any] | None) -> dict[str, Any]:
    """The pipeline's own settings (engine settings never change what a run writes)."""
    return {k: v for k, v in (config or {}).items() if not k.startswith(ENGINE_PREFIX)}


def committed_as_configured(
    pipeline: Pipeline, ds: str, config: dict[str, Any] | None = None, code_files: Iterable[str] = ()
) -> bool:
    """Whether ``ds`` is committed by a run of this very configuration (same fingerprint)."""
    storage = pipeline.sink.storage()
    path = f"{pipeline.sink.partition(ds)}/{staging.MANIFEST}"
    if not storage.exists(path):
        return False
    committed = storage.read_json(path).get("fingerprint")
    return committed == fingerprint(pipeline, _settings(config), code_files)["hash"]


@dataclass
class Inputs:
    """A run's listed input: its records (largest first where their sizes are known), the
    warnings of the listing, the histogram of input sizes and each input's size (null
    where unknown) where the source knows them, and what was ignored."""

    records: pa.Table
    warnings: list[str]
    histogram: dict | None = None
    sizes: pa.Array | None = None
    ignored: dict | None = None  # the files the input matched that the source does not read


def list_inputs(pipeline: Pipeline, engine: EngineConf) -> Inputs:
    """The input records, with a warning where there are none and that is allowed, and
    one where the input matched files of a type the source does not read (a `.pdf` among
    documents, a `.jsonl.zst` among table files): those are named, never passed over in
    silence. What lies under the output is neither (``Files.listing``'s ``exclude``).

    Where the source knows the inputs' sizes, they come largest first: the run ends on
    its smallest inputs, so that the last batches, which some actors finish while the
    others already idle, are short (with 2 model actors on 542 pages of the Rust books,
    the second actor idled for the last 10 s of an 87 s run in listing order)."""
    source = pipeline.source
    try:
        if not hasattr(source, "listing"):
            return Inputs(source.list(), [])
        listing = source.listing(exclude=pipeline.sink.url)
    except NoInputs as exc:
        if not engine.allow_empty_input:
            raise NoInputs(
                f"{exc} (a quiet day? --conf {ENGINE_PREFIX}allow_empty_input=true commits an empty partition)"
            ) from None
        warning = f"{exc}: an empty partition is committed ({ENGINE_PREFIX}allow_empty_input)"
        log.warning(warning)
        return Inputs(pipeline.source.schema.empty_table(), [warning])
    records, sizes = largest_first(listing.records, listing.sizes)
    inputs = Inputs(records, list(listing.warnings), size_histogram(listing.sizes), sizes)
    for warning in listing.warnings:
        log.warning(warning)
    if listing.ignored:
        inputs.ignored = ignored_summary(listing.ignored)
        inputs.warnings.append(ignored_warning(source, inputs.ignored))
        log.warning(inputs.warnings[-1])
    return inputs


def ignored_summary(ignored: tuple[str, ...], examples: int = 5) -> dict:
    """How many files were ignored, by extension (the last one: `.zst` of `a.jsonl.zst`),
    and the first few of them."""
    by_extension: dict[str, int] = {}
    for uri in ignored:
        name = uri.rsplit("/", 1)[-1]
        extension = "." + name.rsplit(".", 1)[1].lower() if "." in name.lstrip(".") else "(none)"
        by_extension[extension] = by_extension.get(extension, 0) + 1
    return {"files": len(ignored), "by_extension": dict(sorted(by_extension.items())),
            "examples": list(ignored[:examples])}


def ignored_warning(source, ignored: dict) -> str:
    kinds = ", ".join(f"{extension} {count:,}" for extension, count in ignored["by_extension"].items())
    reads = getattr(source, "extensions", None)
    what = f" (it reads {', '.join(reads)})" if reads else ""
    more = ", ..." if ignored["files"] > len(ignored["examples"]) else ""
    return (f"input {source.url}: {ignored['files']:,} file(s) of a type this pipeline does not read were "
            f"ignored{what}: {kinds}; {', '.join(ignored['examples'])}{more}")


def largest_first(inputs: pa.Table, sizes: pa.Array) -> tuple[pa.Table, pa.Array | None]:
    """``inputs`` by decreasing size of their source file, and their sizes in that order;
    those of unknown size last; ties in listing order. The splits of a table file (the
    inputs of one ``source``) stay together, in file order: a worker then reads one
    file's row groups one after another, with its footer parsed once."""
    if len(sizes) != inputs.num_rows:
        return inputs, None
    if not inputs.num_rows:
        return inputs, sizes
    key = sizes
    if "source" in inputs.column_names:
        files = pa.table({"source": inputs.column("source"), "size": sizes}).group_by(
            "source", use_threads=False).aggregate([("size", "sum")])
        key = pc.take(files.column("size_sum"), pc.index_in(inputs.column("source"), value_set=files.column("source")))
    order = pc.sort_indices(pa.table({"size": pc.fill_null(key, -1)}), sort_keys=[("size", "descending")])
    return inputs.take(order), sizes.take(order)


def size_histogram(sizes: pa.Array) -> dict:
    """Input sizes in bins of powers of 4 bytes (1 B, 4 B, ... 1 GiB and more)."""
    import numpy as np

    known = np.asarray(sizes.drop_null(), dtype=np.float64)
    edges = [0] + [4 ** k for k in range(1, 16)]
    counts = np.histogram(known, bins=[*edges, float("inf")])[0].tolist() if len(known) else []
    return {"edges": edges, "counts": counts, "files": len(sizes), "unknown": sizes.null_count,
            "bytes": int(known.sum()) if len(known) else 0}


def recordable_config(config: dict[str, Any] | None) -> dict[str, Any]:
    """The run's settings as the manifest may hold them: storage options without values."""
    config = dict(config or {})
    key = f"{ENGINE_PREFIX}storage_options"
    if config.get(key) is not None:
        config[key] = redacted(config[key])
    return config


def _not_done(inputs: pa.Table, id_column: str, done: set[str]) -> pa.Array:
    """Which input records have an id not in ``done`` (a boolean mask)."""
    return pc.invert(pc.is_in(inputs.column(id_column), pa.array(sorted(done), pa.string())))
