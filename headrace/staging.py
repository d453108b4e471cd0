"""The staging area of a run, and resuming a killed one.

Everything of a run for date D is staged under ``OUT/_staging/ds=D/``:

    _RUN                       the fingerprint of the configuration, and the attempts so far
    data/part-A-T.parquet      rows staged by write task T of attempt A
    quarantine/part-A-T.parquet
    progress/part-A-T.json     what that task staged: rows, files, and per input its weight

A write task (headrace.part_writer) writes its data and quarantine files first and its
progress file last, so a progress file is the task's commit point.

Resume: a run for the same date and the same fingerprint keeps what an earlier, killed
attempt staged. An input is complete when the weights of its staged rows add up to the
full weight it entered with (headrace.envelope); complete inputs are not processed
again, and rows of incomplete ones are removed from the staged files before the new
attempt starts. A different fingerprint discards the staged files, and says why.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from headrace.envelope import FULL_WEIGHT
from headrace.fingerprint import software_changed, what_changed
from headrace.storage import Storage, at_once

MANIFEST = "_SUCCESS"
FAILED = "_FAILED"
RUN = "_RUN"
SUBFOLDERS = ("data", "quarantine", "progress")


def no_ids() -> pa.Array:
    return pa.array([], pa.string())


def unique_ids(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The distinct ids of a column, as one Arrow array."""
    unique = pc.unique(column)
    return unique.combine_chunks() if isinstance(unique, pa.ChunkedArray) else unique


@dataclass
class StagedPart:
    """What one write task staged: its files, row counts, the ids of the inputs in them
    and, in its progress file, the weight of every input in it.

    Ids are Arrow arrays, a few bytes each: a run of millions of inputs brings them all to
    the driver for the conservation check. The weights are only needed to resume, so
    they stay in the progress file; the part a write task returns has none.
    """

    name: str = ""
    data_rows: int = 0
    data_bytes: int = 0
    quarantine_rows: int = 0
    data_ids: pa.Array = field(default_factory=no_ids)
    quarantine_ids: pa.Array = field(default_factory=no_ids)
    empty_ids: pa.Array = field(default_factory=no_ids)  # inputs that held no records
    weights: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)  # "stage: ErrorType" -> quarantined rows
    samples: dict[str, list[str]] = field(default_factory=dict)  # "stage: ErrorType" -> a few messages

    def document(self) -> dict:
        """The progress file's content."""
        return {
            "name": self.name, "data_rows": self.data_rows, "data_bytes": self.data_bytes,
            "quarantine_rows": self.quarantine_rows, "data_ids": self.data_ids.to_pylist(),
            "quarantine_ids": self.quarantine_ids.to_pylist(), "empty_ids": self.empty_ids.to_pylist(), "weights": self.weights, "errors": self.errors,
            "samples": self.samples,
        }

    @classmethod
    def from_document(cls, document: dict) -> "StagedPart":
        ids = {key: pa.array(document.get(key, []), pa.string()) for key in ("data_ids", "quarantine_ids", "empty_ids")}
        return cls(**{**document, **ids})

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
    run: dict = field(default_factory=dict)  # the _RUN document this attempt wrote


@dataclass(frozen=True)
class StagingArea:
    """``OUT/_staging/ds=D`` on some filesystem."""

    storage: Storage
    root: str
    compression: str = "zstd"

    def path(self, *names: str) -> str:
        return posixpath.join(self.root, *names)


def prepare(area: StagingArea, fingerprint: dict, run_id: str, resume: bool = True, description: dict | None = None) -> Resumed:
    """Create the staging area, keeping an earlier attempt's parts when resuming is allowed.

    ``fingerprint`` is headrace.fingerprint's document. Earlier staged files of another
    configuration, of a run that was publishing, or of a run that asked not to resume
    are removed, and the reason is returned in ``discarded``.
    """
    storage = area.storage
    resumed = Resumed()
    previous = storage.read_json(area.path(RUN)) if storage.exists(area.path(RUN)) else None
    upgraded = software_changed(previous.get("document"), fingerprint) if previous is not None else ""
    same = previous is not None and previous.get("fingerprint") == fingerprint["hash"] and not upgraded
    if previous is not None and resume and same and not previous.get("publishing"):
        resumed.attempt = len(previous.get("attempts", []))
        resumed.parts = _staged_parts(area)
        attempts = previous.get("attempts", [])
    else:
        if previous is not None:
            if not resume:
                why = "resume is off"
            elif previous.get("publishing"):
                why = "the earlier run was publishing when it stopped"
            elif previous.get("fingerprint") == fingerprint["hash"]:
                why = f"the libraries changed: {upgraded}"
            else:
                why = f"the configuration changed: {what_changed(previous.get('document'), fingerprint)}"
            resumed.discarded = f"{why} (earlier attempts: {', '.join(previous.get('attempts', [])) or '-'})"
        if storage.exists(area.root):
            storage.remove(area.root, recursive=True)
        attempts = []
    for sub in SUBFOLDERS:
        storage.makedirs(area.path(sub))
    storage.remove(area.path(FAILED), missing_ok=True)
    resumed.run = {
        "fingerprint": fingerprint["hash"],
        "document": fingerprint,
        "attempts": [*attempts, run_id],
        **(description or {}),
    }
    storage.write_json(area.path(RUN), resumed.run)
    return resumed


def _staged_parts(area: StagingArea) -> list[StagedPart]:
    """The parts with a progress file; files that have none (a task killed half-way) are removed."""
    storage = area.storage
    names = [name for name in storage.listdir(area.path("progress")) if name.endswith(".json") and not name.startswith(".")]
    # Read STORE_REQUESTS at a time: a bucket's round trip each, for every write task of the run.
    parts = [StagedPart.from_document(document)
             for document in at_once(lambda name: storage.read_json(area.path("progress", name)), names)]
    known = {"data": {p.file for p in parts}, "progress": {p.progress for p in parts}}
    known["quarantine"] = known["data"]
    for sub, keep in known.items():
        unclaimed = [area.path(sub, name) for name in storage.listdir(area.path(sub)) if name not in keep]
        at_once(lambda path: storage.remove(path, recursive=True), unclaimed)
    return parts


def complete_inputs(parts: list[StagedPart], wanted: set[str]) -> set[str]:
    """The inputs among ``wanted`` whose staged weights add up to the full weight."""
    totals: dict[str, int] = {}
    for part in parts:
        for key, weight in part.weights.items():
            totals[key] = totals.get(key, 0) + weight
    return {k for k, total in totals.items() if total == FULL_WEIGHT and k in wanted}


def keep_complete(area: StagingArea, resumed: Resumed, input_ids: list[str], id_column: str,
                  quarantine_by_input: bool = True) -> None:
    """Find the inputs an earlier attempt finished, and strip every other input's rows
    from its staged files (they are made again). Fills ``resumed.complete``.
    ``quarantine_by_input``: the quarantine's record_id is the input's id (not where an
    input holds many records, each quarantined under its own id: table splits)."""
    if not resumed.parts:
        return
    complete = complete_inputs(resumed.parts, set(input_ids))
    # A part that holds an unfinished input and cannot be split goes whole: the finished
    # inputs in it are then unfinished too (their rows in other parts are stripped), which
    # can catch more such parts.
    splittable: dict[int, bool] = {}
    while True:
        caught = set()
        for index, part in enumerate(resumed.parts):
            if set(part.weights) <= complete:
                continue
            if index not in splittable:
                splittable[index] = _splittable(area, part, id_column, quarantine_by_input)
            if not splittable[index]:
                caught |= set(part.weights) & complete
        if not caught:
            break
        complete -= caught
    kept = []
    for index, part in enumerate(resumed.parts):
        if set(part.weights) <= complete:
            kept.append(part)
            continue
        replacement = strip_part(area, part, complete, f"part-{resumed.attempt:03d}-r{index:05d}", id_column)
        if replacement is not None:
            kept.append(replacement)
    resumed.parts, resumed.complete = kept, complete


def _splittable(area: StagingArea, part: StagedPart, id_column: str, quarantine_by_input: bool) -> bool:
    """Whether ``part``'s files say each row's input: its data has the id column, its
    quarantine names rows by their input (not where rows have ids of their own)."""
    if part.quarantine_rows and not quarantine_by_input:
        return False
    return not part.data_rows or id_column in area.storage.read_parquet_schema(area.path("data", part.file)).names


def strip_part(area: StagingArea, part: StagedPart, complete: set[str], name: str, id_column: str) -> StagedPart | None:
    """Rewrite ``part`` with only the rows of complete inputs, under a new name; a part
    that is not ``_splittable`` must hold no complete input (it is then removed whole).

    Order matters for a kill at any point: the new files first, then the old progress
    file goes, then the new one is written, then the old files go. A kill in between
    leaves files without a progress file, which the next attempt removes; never two
    progress files claiming the same rows.
    """
    storage = area.storage
    replacement = StagedPart(name=name)
    keep = sorted(set(part.weights) & complete)
    for sub in ("data", "quarantine") if keep else ():
        if not (part.data_rows if sub == "data" else part.quarantine_rows):
            continue
        table = storage.read_parquet(area.path(sub, part.file))
        column = id_column if sub == "data" else "record_id"
        table = table.filter(pc.is_in(table.column(column), pa.array(keep, pa.string())))
        if not table.num_rows:
            continue
        size = storage.write_parquet(table, area.path(sub, replacement.file), area.compression)
        ids = unique_ids(table.column(column))
        if sub == "data":
            replacement.data_rows, replacement.data_bytes, replacement.data_ids = table.num_rows, size, ids
        else:
            replacement.quarantine_rows, replacement.quarantine_ids = table.num_rows, ids
            replacement.errors, replacement.samples = error_counts(table), error_samples(table)
    if len(part.empty_ids):
        replacement.empty_ids = pc.filter(part.empty_ids, pc.is_in(part.empty_ids, pa.array(keep, pa.string())))
    replacement.weights = {k: part.weights[k] for k in keep}
    storage.remove(area.path("progress", part.progress))
    if keep:
        storage.write_json(area.path("progress", replacement.progress), replacement.document())
    for sub in ("data", "quarantine"):
        storage.remove(area.path(sub, part.file), missing_ok=True)
    return replacement if keep else None


def error_samples(quarantine: pa.Table, per_cause: int = 3) -> dict[str, list[str]]:
    """Up to ``per_cause`` messages of each "stage: ErrorType", for the run report."""
    samples: dict[str, list[str]] = {}
    columns = (quarantine.column(c).to_pylist() for c in ("stage", "error_type", "message", "source"))
    for stage, error_type, message, source in zip(*columns):
        kept = samples.setdefault(f"{stage}: {error_type}", [])
        if len(kept) < per_cause:
            kept.append(f"{source}: {(message or '')[:300]}")
    return samples


def error_counts(quarantine: pa.Table) -> dict[str, int]:
    counts: dict[str, int] = {}
    for stage, error_type in zip(quarantine.column("stage").to_pylist(), quarantine.column("error_type").to_pylist()):
        key = f"{stage}: {error_type}"
        counts[key] = counts.get(key, 0) + 1
    return counts
