"""The commit: conservation, the quality gate, then publishing the partition.

When every write task is done, the driver checks that every input is accounted for
(in the output, or only in the quarantine) and applies the quality gate. A refused run
publishes nothing: it leaves its staged files and a ``_FAILED`` manifest, and the
previous partition stays as it was. Then it publishes, in one of two ways:

- On a local or mounted disk: write ``_SUCCESS`` into the staged data folder and swap
  it with the published partition in a single rename (renameat2 RENAME_EXCHANGE). A
  reader sees the old partition or the new one, never a mix.
- On an object store (no rename): copy the staged files server-side into the partition
  under names unique to the run, then write ``_SUCCESS`` (one PUT, the commit point: it
  lists exactly the partition's files), then delete every file of the partition and of
  its quarantine that ``_SUCCESS`` does not list. A reader that follows ``_SUCCESS``
  (``headrace.read``) sees the old rows or the new ones, never a mix; a reader that
  globs the folder sees the new files next to the old ones between the copies and the
  deletes (seconds), or until the date's next run if the driver dies in between.
"""

from __future__ import annotations

import ctypes
import errno
import os
import posixpath
import shutil
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from headrace.errors import ConservationError, QualityGateError
from headrace.staging import FAILED, MANIFEST, RUN, StagedPart, StagingArea
from headrace.storage import at_once, sync_folder

EMPTY_PART = "part-00000.parquet"


def account(parts: list[StagedPart], inputs: pa.Table, id_column: str) -> dict[str, int]:
    """The run's counts; raises ConservationError unless every input is in the output or the quarantine."""
    # In Arrow, not Python sets: a few bytes per input, for millions of inputs.
    input_ids = pc.unique(inputs.column(id_column))
    with_output = _unique_ids(p.data_ids for p in parts)
    quarantined = _unique_ids(p.quarantine_ids for p in parts)
    empty = _unique_ids(p.empty_ids for p in parts)
    seen = pa.concat_arrays([with_output, quarantined, empty])
    missing = inputs.filter(pc.invert(pc.is_in(inputs.column(id_column), value_set=seen)))
    unknown = pc.sum(pc.invert(pc.is_in(pc.unique(seen), value_set=input_ids))).as_py() or 0
    if missing.num_rows or unknown:
        example = ", ".join(sorted(missing.column("source").to_pylist())[:3])
        raise ConservationError(
            f"conservation check failed: {missing.num_rows} input(s) neither in the output nor in "
            f"the quarantine (e.g. {example or '-'}); {unknown} unknown id(s); nothing published"
        )
    only_quarantined = pc.sum(pc.invert(pc.is_in(quarantined, value_set=with_output))).as_py() or 0
    counts = {
        "input": len(input_ids),
        "output": sum(p.data_rows for p in parts),
        "quarantined": sum(p.quarantine_rows for p in parts),
        "input_with_output": len(with_output),
        "input_quarantined_only": only_quarantined,
    }
    if len(empty):  # inputs that held no records (a byte range of a table file in which no line starts)
        counts["input_empty"] = len(empty)
    return counts


def _unique_ids(arrays) -> pa.Array:
    arrays = [a.cast(pa.string()) for a in arrays if len(a)]
    return pc.unique(pa.concat_arrays(arrays)) if arrays else pa.array([], pa.string())


def gate(counts: dict[str, int], parts: list[StagedPart], limit: float) -> tuple[str | None, str | None]:
    """(why the run must not be published, a warning); at most one of them is set.

    Refused: more than ``limit`` of the inputs ended only in the quarantine. An empty
    output from a non-empty input is refused too, unless the gate is explicitly off (1.0),
    and then it is published with a warning, never silently.
    """
    inputs, bad = counts["input"], counts["input_quarantined_only"]
    errors: Counter = Counter()
    for part in parts:
        errors.update(part.errors)
    common = ", ".join(f"{key} ({n})" for key, n in errors.most_common(3))
    cause = f"; most quarantined by {common}" if common else ""
    if inputs and bad > limit * inputs:
        return (
            f"quality gate: {bad} of {inputs} inputs ({bad / inputs:.0%}) ended only in the quarantine, "
            f"above max_quarantine_fraction={limit:g}{cause}"
        ), None
    if inputs and counts["output"] == 0:
        if limit < 1.0:
            return f"quality gate: no output rows from {inputs} inputs{cause}", None
        return None, f"the output is empty although {inputs} inputs were read (max_quarantine_fraction=1){cause}"
    return None, None


def quarantine_causes(parts: list[StagedPart]) -> list[dict]:
    """Quarantined rows by "stage: ErrorType", most first, each with a few sample messages."""
    counts: Counter = Counter()
    samples: dict[str, list[str]] = {}
    for part in parts:
        counts.update(part.errors)
        for cause, messages in part.samples.items():
            kept = samples.setdefault(cause, [])
            kept.extend(messages[: max(0, 3 - len(kept))])
    return [{"cause": cause, "rows": rows, "samples": samples.get(cause, [])} for cause, rows in counts.most_common()]


@dataclass
class Layout:
    """The files a publish makes visible: names in the partition and quarantine, and
    the staged file each one comes from."""

    files: list[dict] = field(default_factory=list)  # {"path", "rows", "bytes"}, as in _SUCCESS
    quarantine_files: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)  # published name -> staged path


def layout(area: StagingArea, parts: list[StagedPart], schema: pa.Schema, run_id: str, unique: bool = False) -> Layout:
    """Name the partition's files. An empty partition gets one empty file, so readers find its schema.

    On a local disk the staged folder becomes the partition, names and all; on an object
    store every published name carries the run id, so a new run never overwrites a file
    that the committed ``_SUCCESS`` still lists.
    """
    def published(staged: str) -> str:
        return staged if area.storage.local and not unique else f"part-{run_id}-{staged[len('part-'):]}"

    result = Layout()
    files = [(p.file, p.data_rows, p.data_bytes) for p in parts if p.data_rows]
    if not files:
        size = area.storage.write_parquet(schema.empty_table(), area.path("data", EMPTY_PART), area.compression)
        files = [(EMPTY_PART, 0, size)]
    for name, rows, size in sorted(files):
        result.files.append({"path": published(name), "rows": rows, "bytes": size})
        result.sources[published(name)] = area.path("data", name)
    for part in sorted(parts, key=lambda p: p.name):
        if part.quarantine_rows:
            result.quarantine_files.append(published(part.file))
            result.sources["_quarantine/" + published(part.file)] = area.path("quarantine", part.file)
    return result


def refuse(area: StagingArea, manifest: dict, reason: str) -> None:
    """Publish nothing, keep the staged files, say why in _FAILED."""
    failed = {**manifest, "status": "failed", "reason": reason, "staged": area.root}
    area.storage.write_json(area.path(FAILED), failed)
    error = QualityGateError(f"{reason}; nothing published; staged files, quarantine and _FAILED kept in {area.root}")
    error.manifest = failed  # the run report of a refused run is this document
    raise error


def publish(area: StagingArea, manifest: dict, run: dict, partition: str, quarantine: str, files: Layout) -> None:
    """Write ``manifest`` as _SUCCESS and make the staged partition and quarantine visible."""
    if not area.storage.local:
        _publish_by_copy(area, manifest, partition, quarantine, files)
        return
    # The staged folders become the partition whole: nothing in them that _SUCCESS does not
    # list (a file a stalled run, whose lock was taken over, wrote after this one resumed).
    staged = {key: posixpath.basename(source) for key, source in files.sources.items()}
    sweep(area.storage, area.path("data"), {v for k, v in staged.items() if not k.startswith("_quarantine/")})
    sweep(area.storage, area.path("quarantine"), {v for k, v in staged.items() if k.startswith("_quarantine/")})
    for folder in (area.path("data"), area.path("quarantine")):
        sync_folder(folder)  # the sweep's removals last too: no unlisted file comes back after a crash
    area.storage.write_json(area.path("data", MANIFEST), manifest)
    # From here on the staged files are not to be resumed: a kill during the swap
    # could leave the old partition's files where the staged ones were.
    area.storage.write_json(area.path(RUN), {**run, "publishing": True})
    # Quarantine first: the data partition's manifest is the commit point.
    publish_directory(area.path("quarantine"), quarantine)
    publish_directory(area.path("data"), partition)
    area.storage.remove(area.root, recursive=True, missing_ok=True)


def copy_staged(area: StagingArea, partition: str, quarantine: str, files: Layout) -> None:
    """Copy the staged files to their published names (server-side on object stores),
    STORE_REQUESTS at a time: one after another, a run of 5,000 files (100 M rows at
    rows_per_file) spent minutes here, while globbing readers saw two runs' files."""
    storage = area.storage
    pairs = [(files.sources["_quarantine/" + name], posixpath.join(quarantine, name)) for name in files.quarantine_files]
    pairs += [(files.sources[entry["path"]], posixpath.join(partition, entry["path"])) for entry in files.files]
    at_once(lambda pair: storage.copy(*pair), pairs)


def _publish_by_copy(area: StagingArea, manifest: dict, partition: str, quarantine: str, files: Layout) -> None:
    """Copy, commit with one PUT of _SUCCESS, then delete what it does not list.

    A kill before the PUT leaves the previous _SUCCESS in force and the staged files
    intact, so the rerun resumes and its own publish deletes the copies left behind.
    """
    storage = area.storage
    copy_staged(area, partition, quarantine, files)
    storage.write_json(posixpath.join(partition, MANIFEST), manifest)
    sweep(storage, partition, {entry["path"] for entry in files.files} | {MANIFEST})
    sweep(storage, quarantine, set(files.quarantine_files))
    storage.remove(area.root, recursive=True, missing_ok=True)


def sweep(storage, folder: str, keep: set[str]) -> None:
    """Delete the files of ``folder`` whose names are not in ``keep`` (STORE_REQUESTS at a time)."""
    gone = [posixpath.join(folder, name) for name in storage.listdir(folder) if name not in keep]
    at_once(lambda path: storage.remove(path, recursive=True, missing_ok=True), gone)


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
        _sync_both(staged, final)
        return
    if _exchange(staged, final):
        _sync_both(staged, final)
        shutil.rmtree(staged)
        return
    aside = os.path.join(os.path.dirname(final), "_replaced_" + os.path.basename(final))
    shutil.rmtree(aside, ignore_errors=True)
    os.rename(final, aside)
    os.rename(staged, final)
    _sync_both(staged, final)
    shutil.rmtree(aside)


def _sync_both(staged: str, final: str) -> None:
    """The published name lasts through a crash: fsync the folders the rename touched."""
    for folder in dict.fromkeys((os.path.dirname(final), os.path.dirname(staged))):
        sync_folder(folder)


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
