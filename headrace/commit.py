"""The commit protocol: stage files, check conservation, publish the partition atomically.

Write tasks stage one data file and one quarantine file each, named after their task
index, so a retried task overwrites its own files. Only when every task is done does
the driver check that every input is accounted for, write the ``_SUCCESS`` manifest
into the staged directory and swap it with the published one in a single rename.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from headrace.errors import ConservationError, QualityGateError
from headrace.records import ERROR, split_errors
from headrace.sink import QUARANTINE_SCHEMA, ParquetSink

MANIFEST = "_SUCCESS"
FAILED = "_FAILED"


@dataclass
class StagedPart:
    """What one write task staged: file paths, row counts and the record ids they hold."""

    data_path: str | None = None
    data_rows: int = 0
    data_bytes: int = 0
    quarantine_path: str | None = None
    quarantine_rows: int = 0
    data_ids: list[str] = field(default_factory=list)
    quarantine_ids: list[str] = field(default_factory=list)


@dataclass
class PartitionCommit:
    sink: ParquetSink
    ds: str
    run_id: str
    keys: tuple[str, ...]
    output_schema: pa.Schema

    @property
    def staging(self) -> str:
        return self.sink.staging(self.ds, self.run_id)

    def prepare(self) -> None:
        """Create this run's staging area; earlier runs' leftovers for this date are removed."""
        parent = os.path.dirname(self.staging)
        if os.path.isdir(parent):
            shutil.rmtree(parent)
        os.makedirs(os.path.join(self.staging, "data"))
        os.makedirs(os.path.join(self.staging, "quarantine"))

    # -- in write tasks ------------------------------------------------------

    def write_part(self, table: pa.Table, task_index: int) -> StagedPart:
        healthy, failed = split_errors(table)
        part = StagedPart()
        id_column = self.keys[0]
        name = f"part-{task_index:05d}.parquet"
        if healthy.num_rows:
            data = healthy.select(self.output_schema.names).cast(self.output_schema)
            part.data_path = os.path.join(self.staging, "data", name)
            _write_atomic(data, part.data_path, self.sink.compression)
            part.data_rows = data.num_rows
            part.data_bytes = os.path.getsize(part.data_path)
            part.data_ids = pc.unique(healthy.column(id_column)).to_pylist()
        if failed.num_rows:
            quarantine = self._quarantine_rows(failed)
            part.quarantine_path = os.path.join(self.staging, "quarantine", name)
            _write_atomic(quarantine, part.quarantine_path, self.sink.compression)
            part.quarantine_rows = quarantine.num_rows
            part.quarantine_ids = pc.unique(failed.column(id_column)).to_pylist()
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
        input_ids = set(inputs.column(self.keys[0]).to_pylist())
        with_output = set().union(*(p.data_ids for p in parts)) if parts else set()
        quarantined = set().union(*(p.quarantine_ids for p in parts)) if parts else set()
        _check_conservation(inputs, self.keys[0], input_ids, with_output, quarantined)
        only_quarantined = len(quarantined - with_output)
        if max_quarantine_fraction is not None and only_quarantined > max_quarantine_fraction * len(input_ids):
            self._refuse(manifest, parts, len(input_ids), only_quarantined, max_quarantine_fraction)

        data_dir = os.path.join(self.staging, "data")
        files = [p for p in parts if p.data_path]
        if not files:  # readers still find the schema of an empty partition
            empty = os.path.join(data_dir, "part-00000.parquet")
            _write_atomic(self.output_schema.empty_table(), empty, self.sink.compression)
            files = [StagedPart(data_path=empty, data_bytes=os.path.getsize(empty))]
        partition = self.sink.partition(self.ds)
        manifest = {
            **manifest,
            "run_id": self.run_id,
            "ds": self.ds,
            "files": [
                {"path": os.path.basename(p.data_path), "rows": p.data_rows, "bytes": p.data_bytes}
                for p in sorted(files, key=lambda p: p.data_path)
            ],
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
        with open(os.path.join(data_dir, MANIFEST), "w") as handle:
            json.dump(manifest, handle, indent=2, default=str)
        # Quarantine first: the data partition's manifest is the commit point.
        publish_directory(os.path.join(self.staging, "quarantine"), self.sink.quarantine(self.ds))
        publish_directory(data_dir, partition)
        shutil.rmtree(os.path.dirname(self.staging), ignore_errors=True)
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
        with open(os.path.join(self.staging, FAILED), "w") as handle:
            json.dump(failed, handle, indent=2, default=str)
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


def _write_atomic(table: pa.Table, path: str, compression: str) -> None:
    temporary = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp")
    pq.write_table(table, temporary, compression=compression)
    os.replace(temporary, path)


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
