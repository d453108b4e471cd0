"""Sources: where a pipeline's records come from."""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
from dataclasses import dataclass, field
from typing import ClassVar

import fsspec
import pyarrow as pa

from headrace.errors import ConfigError, NoInputs
from headrace.retry import retrying
from headrace.storage import absolute_url, is_local

GLOB_CHARS = "*?["


@dataclass(frozen=True)
class Listing:
    """What a source's listing found: its input records, each one's size in bytes (null
    where the store said none), and the files the URL matched that the source does not
    read (of another type), which a run reports rather than passing over in silence."""

    records: pa.Table
    sizes: pa.Array
    ignored: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()  # e.g. `{a,b}` alternatives that matched nothing


def stable_id(uri: str) -> str:
    """A short id that stays the same for the same source URI across runs."""
    return hashlib.sha256(uri.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Files:
    """Files from a local path, a URL (file://, gs://, ...) or a glob, listed through fsspec.

    Each file is one record: ``source`` (its URI) and ``id_column`` (a stable id of it).
    A directory is listed recursively; names starting with '.' or '_' are skipped.
    """

    url: str
    extensions: tuple[str, ...] = ()
    id_column: str = "doc_id"
    row_id: ClassVar[str | None] = None  # a record is a file: its id_column is the quarantine's record_id
    # How inputs are packed into tasks, not which rows a run makes: out of the repr, so out
    # of the run's fingerprint (retuning it between a killed run and its resume keeps the work).
    files_per_block: int = field(default=16, repr=False)
    # The url as the user wrote it, for messages (a source that lists through Files names its own).
    given: str = field(default="", repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "given", self.given or self.url)
        object.__setattr__(self, "url", absolute_url(self.url, "input"))

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.id_column, "source")

    @property
    def schema(self) -> pa.Schema:
        return pa.schema([(self.id_column, pa.string()), ("source", pa.string())])

    def list(self) -> pa.Table:
        """The input records, in a stable order. Raises ConfigError when nothing matches."""
        return self.listing().records

    def listing(self, exclude: str | None = None) -> Listing:
        """The input records, each file's size, and the files of other types the URL matched.

        Nothing under ``exclude`` (the run's output, a URL) is either: where the output lies
        inside the input folder (``input=data``, ``output=data/emb``), a run never reads what
        runs write (a table job would otherwise take its own Parquet files of earlier dates
        as input, more every night), nor reports it as ignored."""
        try:
            fs, path = fsspec.core.url_to_fs(self.url)
        except (ImportError, ValueError) as exc:
            raise ConfigError(f"input {self.given!r}: {exc}") from exc
        fs.invalidate_cache()  # a filesystem instance is shared in a process: list afresh
        warnings: list[str] = []
        try:
            candidates = retrying(lambda: self._candidates(fs, path, warnings), 5, 0.2, f"list {self.url}")
        finally:
            # s3fs's and gcsfs's find keep every object's details in the filesystem's listing
            # cache, which lives as long as the process: 1.2 KB an S3 object (1 GiB a million)
            # held by the driver for the whole run, beside the listing's Arrow table (70-90 bytes).
            fs.invalidate_cache()
        _refuse_names_not_utf8(candidates, self.given)
        output = 0
        if exclude:
            prefix = exclude.rstrip("/") + "/"
            kept = {p: size for p, size in candidates.items() if not fs.unstrip_protocol(p).startswith(prefix)}
            output, candidates = len(candidates) - len(kept), kept
        matched = sorted(p for p in candidates if self._wanted(p))
        sizes = pa.array([candidates[p] for p in matched], pa.int64())
        if not matched:
            wanted = "/".join(self.extensions) + " " if self.extensions else ""
            ignored = f" ({len(candidates)} other files ignored)" if candidates else ""
            under = f" (and {output} under the output, which a run never reads)" if output else ""
            raise NoInputs(f"input {self.given!r} matched no {wanted}files{ignored}{under}")
        ignored = tuple(fs.unstrip_protocol(p) for p in sorted(p for p in candidates if not self._wanted(p)))
        del candidates
        return Listing(self._records(fs, matched), sizes, ignored, tuple(dict.fromkeys(warnings)))

    def _records(self, fs, matched: list[str], page: int = 65_536) -> pa.Table:
        """The records of the ``matched`` paths, made a page at a time: their URIs and ids as
        Python strings for one page only (whole lists of them were 200 bytes an input more at
        the listing's peak; the table holds them in about 90)."""
        batches = []
        for start in range(0, len(matched), page):
            uris = [fs.unstrip_protocol(p) for p in matched[start:start + page]]
            batches.append(pa.record_batch([pa.array([stable_id(u) for u in uris], pa.string()),
                                            pa.array(uris, pa.string())], schema=self.schema))
        return pa.Table.from_batches(batches, schema=self.schema).combine_chunks()

    def _candidates(self, fs, path: str, warnings: list[str]) -> dict[str, int | None]:
        """The files ``path`` names; `{a,b}` alternatives, as Spark's (Hadoop's) glob and
        the shell read them, are listed each and their files taken together (before: `input
        'crawl/{2026-11-01,2026-11-02}' does not exist`). An alternative that matches
        nothing is passed over with a warning, as Spark's glob passes over it; where none
        matches, the input does not exist."""
        alternatives = brace_alternatives(path) if "{" in path and not fs.exists(path) else [path]
        if len(alternatives) == 1:
            return self._matched(fs, path)
        found: dict[str, int | None] = {}
        missing = []
        for alternative in alternatives:
            try:
                found.update(self._matched(fs, alternative))
            except ConfigError:
                missing.append(alternative)
        if len(missing) == len(alternatives):
            raise ConfigError(f"input {self.given!r} does not exist (none of its {len(alternatives)} alternatives does)")
        if missing:
            warnings.append(f"input {self.given!r}: {len(missing)} of its {len(alternatives)} alternatives match nothing: "
                            + ", ".join(fs.unstrip_protocol(m) for m in missing[:5]) + (", ..." if len(missing) > 5 else ""))
        return found

    def _matched(self, fs, path: str) -> dict[str, int | None]:
        # A local folder is walked here (links followed, an unreadable folder an error:
        # fsspec's find passes over both). Object stores list a prefix flat, page by page
        # (one request per 1,000 objects, none per object), and raise on a failed page.
        if is_local(fs):
            return _local_files(fs, path, self.given)
        if any(ch in path for ch in GLOB_CHARS):
            found = {p: info for p, info in fs.glob(path, detail=True).items() if not _folder_marker(p)}
            listed = {p: info.get("size") for p, info in found.items() if info.get("type") != "directory"}
            folders = [p for p, info in found.items() if info.get("type") == "directory"]
            # A `**` glob has listed everything below already; else each matched folder is listed.
            def listed_in(folder: str) -> dict[str, int | None]:
                if "**" in path:  # listed below already
                    return {p: size for p, size in listed.items() if p.startswith(folder + "/")}
                return {p: i.get("size") for p, i in fs.find(folder, detail=True).items() if not _folder_marker(p)}

            return _with_matched_folders(listed, folders, _glob_root(path), listed_in)
        if fs.isdir(path):
            return _store_files(fs, path, lambda p: not _hidden(p, path) and not _folder_marker(p))
        if fs.exists(path):
            return {path: fs.size(path)}
        raise ConfigError(f"input {self.given!r} does not exist")

    def _wanted(self, path: str) -> bool:
        return not self.extensions or path.lower().endswith(tuple(e.lower() for e in self.extensions))

    def describe(self) -> str:
        exts = f" [{', '.join(self.extensions)}]" if self.extensions else ""
        return f"files {self.url}{exts}"


GCS_PAGE = 1000  # objects a GCS listing request asks for


def _store_files(fs, path: str, wanted) -> dict[str, int | None]:
    """Every object below the folder ``path`` of an object store that ``wanted`` keeps, with its size.

    fsspec's find gathers every object's details (about 1.2 KB each from s3fs, 1.9 KB from
    gcsfs) before it returns: 15 GB in the driver at the peak of a 10-million-object
    listing on S3. On S3 and GCS the pages are taken one at a time instead, keeping only
    names and sizes; the same requests, one per 1,000 objects. gcsfs's find also stops at
    10,000,000 objects without a word (its listing's default `max_results`): the objects
    past it were left out of the run. A versioned filesystem, and other stores, go through
    find; so does S3 or GCS should the client's page call change."""
    kind = type(fs).__name__
    if getattr(fs, "version_aware", False) or kind not in ("S3FileSystem", "GCSFileSystem", "ExtendedGcsFileSystem"):
        return _found(fs, path, wanted)
    from fsspec.asyn import sync

    bucket, key, _ = fs.split_path(path)
    prefix = key.rstrip("/") + "/" if key else ""

    async def s3() -> dict[str, int | None]:
        found: dict[str, int | None] = {}
        async for info in fs._iterdir(bucket, delimiter="", prefix=prefix):
            if info.get("type") != "directory" and wanted(info["name"]):
                found[info["name"]] = info.get("size")
        return found

    async def gcs() -> dict[str, int | None]:
        found: dict[str, int | None] = {}
        token = None
        while True:
            page = await fs._call("GET", "b/{}/o", bucket, json_out=True, prefix=prefix or None, maxResults=GCS_PAGE,
                                  pageToken=token, fields="items(name,size),nextPageToken")
            for item in page.get("items", []):
                name = f"{bucket}/{item['name']}"
                if wanted(name):
                    found[name] = int(item["size"]) if item.get("size") is not None else None
            token = page.get("nextPageToken")
            if not token:
                return found

    try:
        return sync(fs.loop, s3 if kind == "S3FileSystem" else gcs)
    except (AttributeError, TypeError):  # the page calls are the clients' own: should they change, list as before
        return _found(fs, path, wanted)


def _found(fs, path: str, wanted) -> dict[str, int | None]:
    return {p: info.get("size") for p, info in fs.find(path, detail=True).items() if wanted(p)}


def brace_alternatives(pattern: str) -> list[str]:
    """The patterns ``pattern``'s `{a,b}` groups stand for, in order, each once: `d/{x,y}/*`
    is `d/x/*` and `d/y/*`; groups nest (`{a,b{1,2}}`) and multiply (`{a,b}/{c,d}`); a group
    without a comma at its top level is literal text, as in the shell."""
    depth, start = 0, 0
    for index, char in enumerate(pattern):
        if char == "{":
            depth, start = depth + 1, index if depth == 0 else start
        elif char == "}" and depth:
            depth -= 1
            if depth == 0:
                parts, level, begin = [], 0, start + 1
                for inner, c in enumerate(pattern[start + 1:index], start + 1):
                    level += (c == "{") - (c == "}")
                    if c == "," and level == 0:
                        parts.append(pattern[begin:inner])
                        begin = inner + 1
                if parts:
                    parts.append(pattern[begin:index])
                    head, tail = pattern[:start], pattern[index + 1:]
                    expanded = [p for part in parts for p in brace_alternatives(head + part + tail)]
                    return list(dict.fromkeys(expanded))
    return [pattern]


def _local_files(fs, path: str, given: str) -> dict[str, int | None]:
    """The files of a local folder, or those a local glob matches (as fsspec's glob does),
    with their sizes; links to folders are followed, as `ls -L`, `find -L` and Spark's
    local reads do. fsspec's find does not follow them, so the files of a linked folder
    (`current -> 2026-11-28`, a dataset linked in from another disk) were left out of the
    run without a word. A folder reached twice (a link back up the tree, two links to one
    folder) is walked once, so no file is an input twice through it. A path that exists
    is taken as it is, glob characters in its name (`run[1]`) included."""
    if fs.isdir(path):
        return {p: size for p, size in _walk_local(fs, path).items() if not _hidden(p, path)}
    if fs.lexists(path):
        return {path: _size(path)}
    if not any(ch in path for ch in GLOB_CHARS):
        raise ConfigError(f"input {given!r} does not exist")
    from fsspec.utils import glob_translate

    root = _glob_root(path)
    depth = None if "**" in path else path[len(root):].count("/") + 1
    pattern = re.compile(glob_translate(path))
    folders: list[str] = []
    walked = _walk_local(fs, root, depth, folders)
    listed = {p: size for p, size in walked.items() if pattern.match(p)}
    def walked_in(folder: str) -> dict[str, int | None]:
        if depth is None:  # a `**` glob has walked everything below already
            return {p: size for p, size in walked.items() if p.startswith(folder + "/")}
        return _walk_local(fs, folder)

    return _with_matched_folders(listed, [f for f in folders if pattern.match(f)], root, walked_in)


def _with_matched_folders(files: dict, folders: list[str], root: str, files_in) -> dict:
    """The files a glob matched, and every file in the folders it matched (``files_in``
    lists a folder's files): a folder the glob matches is read whole, as a folder given by
    name is, and as Spark reads `crawl/2026-11-2*` (before, its files were left out:
    "matched no files"). Hidden names (`_SUCCESS`, `.crc`) below the glob's root, or below
    a matched folder, are left out."""
    kept = {p: size for p, size in files.items() if not _hidden(p, root)}
    for folder in _outermost(folders):
        kept.update({p: size for p, size in files_in(folder).items() if not _hidden(p, folder)})
    return kept


def _refuse_names_not_utf8(paths, given: str) -> None:
    """A local file whose name is not UTF-8 (Python holds its bytes as surrogates) cannot
    be an input's `source` (Arrow strings are UTF-8): every run failed with `failed:
    UnicodeEncodeError: ... surrogates not allowed` (exit 1, retried to no end). It is exit
    2 before anything runs, naming the file, as Spark's job fails on it too."""
    bad = sorted(p for p in paths if not p.isascii() and not _utf8(p))
    if bad:
        shown = ", ".join(p.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace") for p in bad[:3])
        raise ConfigError(f"input {given!r}: {len(bad)} file name(s) are not UTF-8 ({shown}{', ...' if len(bad) > 3 else ''}): "
                          "rename them (convmv -f latin1 -t utf8) or leave them out of the input")


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _folder_marker(path: str) -> bool:
    """An empty object named like a folder (`docs/sub/`), as the S3 console's "Create folder"
    makes: no file, and never "a file of a type the pipeline does not read"."""
    return path.endswith("/")


def _glob_root(path: str) -> str:
    """The folder a glob starts in: its path up to the last `/` before any glob character."""
    magic = min(i for i in (path.find(ch) for ch in GLOB_CHARS) if i >= 0)
    return path[: path.rindex("/", 0, magic) + 1] if "/" in path[:magic] else "./"


def _outermost(folders) -> list[str]:
    """The folders that lie in none of the others."""
    kept: list[str] = []
    for folder in sorted(f.rstrip("/") for f in folders):
        if not kept or not folder.startswith(kept[-1] + "/"):
            kept.append(folder)
    return kept


def _walk_local(fs, root: str, maxdepth: int | None = None, found_folders: list[str] | None = None) -> dict[str, int | None]:
    """Every file under ``root`` (at most ``maxdepth`` levels down), listed through ``fs``
    folder by folder, following links to folders, each folder once; a broken link is
    listed (reading it fails, with the reason). A folder that cannot be listed fails the
    listing: its files are never left out unsaid. ``found_folders`` collects the folders found
    (down to ``maxdepth`` levels, descended into or not)."""
    found: dict[str, int | None] = {}
    seen: set[str] = set()
    folders = [(root.rstrip("/") or "/", 0)]
    while folders:
        folder, level = folders.pop()
        real = os.path.realpath(folder)
        if real in seen:
            continue
        seen.add(real)
        try:
            entries = fs.ls(folder, detail=True)
        except PermissionError as error:
            raise ConfigError(f"input folder {folder} cannot be listed: {error.strerror or error}; its files "
                              f"would be left out of the run (make it readable, or leave it out of the input)") from None
        below = []
        for entry in sorted(entries, key=lambda e: e["name"]):
            name, link = entry["name"], entry.get("islink", False)
            if entry.get("type") == "directory" or (link and os.path.isdir(name)):
                if found_folders is not None:
                    found_folders.append(name)
                if maxdepth is None or level + 1 < maxdepth:
                    below.append((name, level + 1))
            else:
                found[name] = _size(name) if link else entry.get("size")
        folders.extend(reversed(below))  # depth first, in name order
    return found


def _size(path: str) -> int | None:
    """A local file's size, through links; None for a broken link."""
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def _hidden(path: str, root: str) -> bool:
    relative = posixpath.relpath(path, root)
    return any(part.startswith((".", "_")) for part in relative.split("/"))
