"""The commit protocol: stage files, check conservation, publish the partition atomically.

Everything of a run for date D is staged under ``OUT/_staging/ds=D/``:

    _RUN                       the fingerprint of the configuration, and the attempts so far
    data/part-A-T.parquet      rows staged by write task T of attempt A
    quarantine/part-A-T.parquet
    progress/part-A-T.json     what that task staged: rows, files, and per input its weight

A write task writes its data and quarantine files first and its progress file last, so
a progress file is the task's commit point; a retried task overwrites its own files.
When every task is done, the driver checks that every input is accounted for, writes
the ``_SUCCESS`` manifest into the staged directory and swaps it with the published
one in a single rename.

Resume: a run for the same date and the same configuration (the same fingerprint)
keeps what an earlier, killed attempt staged. An input is complete when the weights of
its staged rows add up to the full weight it entered with; complete inputs are not
processed again, and rows of incomplete ones are removed from the staged files before
the new attempt starts. A different configuration discards the staged files instead.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from headrace.errors import ConservationError, QualityGateError
from headrace.records import ERROR, FULL_WEIGHT, WEIGHT, split_errors
from headrace.sink import QUARANTINE_SCHEMA, ParquetSink

log = logging.getLogger("headrace")
MANIFEST = "_SUCCESS"
FAILED = "_FAILED"
RUN = "_RUN"


@dataclass
class StagedPart:
    """What one write task staged: its files, row counts and the weight of every input in it."""

    name: str = ""
    data_rows: int = 0
    data_bytes: int = 0
    quarantine_rows: int = 0
    data_ids: list[str] = field(default_factory=list)
    quarantine_ids: list[str] = field(default_factory=list)
    weights: dict[str, int] = field(default_factory=dict)

    @property
    def file(self) -> str:
        return f"{self.name}.parquet"

    @property
    def progress(self) -> str:
        return f"{self.name}.json"


@dataclass
class Resumed:
    """What an earlier attempt of the same run left that this attempt keeps."""

    attempt: int = 0
    parts: list[StagedPart] = field(default_factory=list)
    complete: set[str] = field(default_factory=set)
    discarded: str = ""  # why earlier staged files were thrown away, if they were


@dataclass
class PartitionCommit:
    sink: ParquetSink
    ds: str
    run_id: str
    keys: tuple[str, ...]
    output_schema: pa.Schema
    fingerprint: str = ""
    attempt: int = 0
    _run: dict = field(default_factory=dict, repr=False)  # what _RUN says, once prepare() wrote it

    @property
    def staging(self) -> str:
        return self.sink.staging(self.ds)

    def _path(self, *names: str) -> str:
        return os.path.join(self.staging, *names)

    def prepare(self, resume: bool = True, description: dict | None = None) -> Resumed:
        """Create the staging area, keeping an earlier attempt's parts when resuming is allowed.

        Earlier staged files of another configuration, of a run that was publishing, or
        of a run that asked not to resume are removed, and the reason is returned.
        """
        storage = self.sink.storage()
        resumed = Resumed()
        previous = storage.read_json(self._path(RUN)) if storage.exists(self._path(RUN)) else None
        if previous is not None and resume and previous.get("fingerprint") == self.fingerprint and not previous.get("publishing"):
            resumed.attempt = len(previous.get("attempts", []))
            resumed.parts = self._staged_parts(storage)
            attempts = previous.get("attempts", [])
        else:
            if previous is not None:
                if not resume:
                    why = "resume is off"
                elif previous.get("publishing"):
                    why = "the earlier run was publishing when it stopped"
                else:
                    why = "the configuration changed"
                resumed.discarded = f"{why} (earlier attempts: {', '.join(previous.get('attempts', [])) or '-'})"
            if storage.exists(self.staging):
                storage.remove(self.staging, recursive=True)
            attempts = []
        for sub in ("data", "quarantine", "progress"):
            storage.makedirs(self._path(sub))
        storage.remove(self._path(FAILED), missing_ok=True)
        self.attempt = resumed.attempt
        self._run = {"fingerprint": self.fingerprint, "attempts": [*attempts, self.run_id], "ds": self.ds, **(description or {})}
        storage.write_json(self._path(RUN), self._run)
        return resumed

    def _staged_parts(self, storage) -> list[StagedPart]:
        """The parts with a progress file; files that have none (a task killed half-way) are removed."""
        parts = []
        for name in storage.listdir(self._path("progress")):
            if name.endswith(".json") and not name.startswith("."):
                parts.append(StagedPart(**storage.read_json(self._path("progress", name))))
        known = {"data": {p.file for p in parts}, "progress": {p.progress for p in parts}}
        known["quarantine"] = known["data"]
        for sub, names in known.items():
            for name in storage.listdir(self._path(sub)):
                if name not in names:
                    storage.remove(self._path(sub, name), recursive=True)
        return parts

    def keep_complete(self, resumed: Resumed, input_ids: list[str]) -> None:
        """Find the inputs an earlier attempt finished, and strip every other input's rows
        from its staged files (they are made again). Fills ``resumed.complete``."""
        if not resumed.parts:
            return
        wanted = set(input_ids)
        totals: dict[str, int] = {}
        for part in resumed.parts:
            for key, weight in part.weights.items():
                totals[key] = totals.get(key, 0) + weight
        complete = {k for k, total in totals.items() if total == FULL_WEIGHT and k in wanted}
        storage = self.sink.storage()
        kept = []
        for index, part in enumerate(resumed.parts):
            if set(part.weights) <= complete:
                kept.append(part)
                continue
            replacement = self._strip(storage, part, complete, f"part-{self.attempt:03d}-r{index:05d}")
            if replacement is not None:
                kept.append(replacement)
        resumed.parts, resumed.complete = kept, complete

    def _strip(self, storage, part: StagedPart, complete: set[str], name: str) -> StagedPart | None:
        """Rewrite ``part`` with only the rows of complete inputs, under a new name.

        Order matters for a kill at any point: the new files first, then the old progress
        file goes, then the new one is written, then the old files go. A kill in between
        leaves files without a progress file, which the next attempt removes; never two
        progress files claiming the same rows.
        """
        id_column = self.keys[0]
        replacement = StagedPart(name=name)
        keep = sorted(set(part.weights) & complete)
        for sub in ("data", "quarantine"):
            path = self._path(sub, part.file)
            if not (part.data_rows if sub == "data" else part.quarantine_rows):
                continue
            table = storage.read_parquet(path)
            column = id_column if sub == "data" else "record_id"
            if column not in table.column_names:
                keep = []  # the output has no id column: this part cannot be split, so redo it all
                break
            table = table.filter(pc.is_in(table.column(column), pa.array(keep, pa.string())))
            if not table.num_rows:
                continue
            size = storage.write_parquet(table, self._path(sub, replacement.file), self.sink.compression)
            ids = pc.unique(table.column(column)).to_pylist()
            if sub == "data":
                replacement.data_rows, replacement.data_bytes, replacement.data_ids = table.num_rows, size, ids
            else:
                replacement.quarantine_rows, replacement.quarantine_ids = table.num_rows, ids
        replacement.weights = {k: part.weights[k] for k in keep}
        storage.remove(self._path("progress", part.progress))
        if keep:
            storage.write_json(self._path("progress", replacement.progress), asdict(replacement))
        for sub in ("data", "quarantine"):
            storage.remove(self._path(sub, part.file), missing_ok=True)
        return replacement if keep else None

    # -- in write tasks ------------------------------------------------------

    def write_part(self, table: pa.Table, task_index: int) -> StagedPart:
        storage = self.sink.storage()
        part = StagedPart(name=f"part-{self.attempt:03d}-{task_index:05d}")
        id_column = self.keys[0]
        if WEIGHT in table.column_names:
            for key, weight in zip(table.column(id_column).to_pylist(), table.column(WEIGHT).to_pylist()):
                part.weights[key] = part.weights.get(key, 0) + weight
        healthy, failed = split_errors(table)
        if healthy.num_rows:
            data = healthy.select(self.output_schema.names).cast(self.output_schema)
            part.data_bytes = storage.write_parquet(data, self._path("data", part.file), self.sink.compression)
            part.data_rows = data.num_rows
            part.data_ids = pc.unique(healthy.column(id_column)).to_pylist()
        if failed.num_rows:
            quarantine = self._quarantine_rows(failed)
            storage.write_parquet(quarantine, self._path("quarantine", part.file), self.sink.compression)
            part.quarantine_rows = quarantine.num_rows
            part.quarantine_ids = pc.unique(failed.column(id_column)).to_pylist()
        # Last: the progress file is what makes this task's files count.
        storage.write_json(self._path("progress", part.progress), asdict(part))
        return part

    def _quarantine_rows(self, failed: pa.Table) -> pa.Table:
        error = failed.column(ERROR).combine_chunks()
        n = failed.num_rows
        return pa.Table.from_arrays(
            [
                failed.column("source"),
                failed.column(self.keys[0]),
                error.field("stage"),
                error.field("error_type"),
                error.field("message"),
                error.field("traceback"),
                pa.array([self.run_id] * n, pa.string()),
            ],
            schema=QUARANTINE_SCHEMA,
        )

    # -- on the driver -------------------------------------------------------

    def commit(
        self, parts: list[StagedPart], inputs: pa.Table, manifest: dict, max_quarantine_fraction: float | None = None
    ) -> dict:
        """Check conservation and the quality gate, write the manifest, publish. Returns the manifest."""
        storage = self.sink.storage()
        input_ids = set(inputs.column(self.keys[0]).to_pylist())
        with_output = set().union(*(p.data_ids for p in parts)) if parts else set()
        quarantined = set().union(*(p.quarantine_ids for p in parts)) if parts else set()
        _check_conservation(inputs, self.keys[0], input_ids, with_output, quarantined)
        only_quarantined = len(quarantined - with_output)
        if max_quarantine_fraction is not None and only_quarantined > max_quarantine_fraction * len(input_ids):
            self._refuse(manifest, parts, len(input_ids), only_quarantined, max_quarantine_fraction)

        files = [(p.file, p.data_rows, p.data_bytes) for p in parts if p.data_rows]
        if not files:  # readers still find the schema of an empty partition
            name = "part-00000.parquet"
            size = storage.write_parquet(self.output_schema.empty_table(), self._path("data", name), self.sink.compression)
            files = [(name, 0, size)]
        partition = self.sink.partition(self.ds)
        manifest = {
            **manifest,
            "run_id": self.run_id,
            "ds": self.ds,
            "files": [{"path": name, "rows": rows, "bytes": size} for name, rows, size in sorted(files)],
            "counts": {
                "input": len(input_ids),
                "output": sum(p.data_rows for p in parts),
                "quarantined": sum(p.quarantine_rows for p in parts),
                "input_with_output": len(with_output),
                "input_quarantined_only": len(quarantined - with_output),
            },
            "schema": [{"name": f.name, "type": str(f.type)} for f in self.output_schema],
            "partition": partition,
            "quarantine": self.sink.quarantine(self.ds),
        }
        storage.write_json(self._path("data", MANIFEST), manifest)
        # From here on the staged files are not to be resumed: a kill during the swap
        # could leave the old partition's files where the staged ones were.
        storage.write_json(self._path(RUN), {**self._run, "publishing": True})
        # Quarantine first: the data partition's manifest is the commit point.
        publish_directory(self._path("quarantine"), self.sink.quarantine(self.ds))
        publish_directory(self._path("data"), partition)
        storage.remove(self.staging, recursive=True, missing_ok=True)
        return manifest

    def _refuse(self, manifest: dict, parts: list[StagedPart], inputs: int, bad: int, limit: float) -> None:
        """The quality gate: publish nothing, keep the staged files, say why in _FAILED."""
        reason = (
            f"quality gate: {bad} of {inputs} inputs ({bad / inputs:.0%}) ended only in the quarantine, "
            f"above max_quarantine_fraction={limit:g}"
        )
        failed = {
            **manifest,
            "run_id": self.run_id,
            "ds": self.ds,
            "status": "failed",
            "reason": reason,
            "counts": {
                "input": inputs,
                "output": sum(p.data_rows for p in parts),
                "quarantined": sum(p.quarantine_rows for p in parts),
                "input_quarantined_only": bad,
            },
            "staged": self.staging,
        }
        self.sink.storage().write_json(self._path(FAILED), failed)
        raise QualityGateError(
            f"{reason}; nothing published; staged files, quarantine and _FAILED kept in {self.staging}"
        )


def _check_conservation(inputs, id_column, input_ids, with_output, quarantined) -> None:
    missing = input_ids - with_output - quarantined
    unknown = (with_output | quarantined) - input_ids
    if missing or unknown:
        sources = dict(zip(inputs.column(id_column).to_pylist(), inputs.column("source").to_pylist()))
        example = ", ".join(sorted(sources[i] for i in list(missing)[:3]))
        raise ConservationError(
            f"conservation check failed: {len(missing)} input(s) neither in the output nor in "
            f"the quarantine (e.g. {example or '-'}); {len(unknown)} unknown id(s); nothing published"
        )


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def publish_directory(staged: str, final: str) -> None:
    """Make ``staged`` visible as ``final`` in one step; the old ``final`` is removed after.

    On Linux both directories are swapped with renameat2(RENAME_EXCHANGE), so a reader
    sees either the old partition or the new one, never neither. Elsewhere the old one
    is moved aside first.
    """
    os.makedirs(os.path.dirname(final), exist_ok=True)
    if not os.path.exists(final):
        os.rename(staged, final)
        return
    if _exchange(staged, final):
        shutil.rmtree(staged)
        return
    aside = os.path.join(os.path.dirname(final), "_replaced_" + os.path.basename(final))
    shutil.rmtree(aside, ignore_errors=True)
    os.rename(final, aside)
    os.rename(staged, final)
    shutil.rmtree(aside)


def _exchange(a: str, b: str) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    result = renameat2(_AT_FDCWD, a.encode(), _AT_FDCWD, b.encode(), _RENAME_EXCHANGE)
    if result == 0:
        return True
    if ctypes.get_errno() in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(ctypes.get_errno(), f"cannot publish {a} as {b}")
