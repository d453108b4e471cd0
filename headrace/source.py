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
        # A path that exists is taken as named, glob characters in it or not (`exp[1]/docs`), as on a disk.
        if any(ch in path for ch in GLOB_CHARS) and not fs.exists(path):
            globbed = _store_glob(fs, path)
            if globbed is not None:
                return globbed
            found = {p: info for p, info in fs.glob(path, detail=True).items() if not _folder_marker(p)}
            listed = {p: info.get("size") for p, info in found.items() if info.get("type") != "directory"}
            folders = [p for p, info in found.items() if info.get("type") == "directory"]
            def listed_in(folder: str) -> dict[str, int | None]:
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
PAGED_STORES = ("S3FileSystem", "GCSFileSystem", "ExtendedGcsFileSystem")


def _paged(fs) -> bool:
    """Whether ``fs`` is an object store listed here page by page (S3, GCS; not a versioned S3)."""
    return not getattr(fs, "version_aware", False) and type(fs).__name__ in PAGED_STORES


async def _entries(fs, bucket: str, prefix: str, delimiter: str = ""):
    """``(name, size, is_folder)`` of every object of ``bucket`` whose key starts with
    ``prefix`` and, with ``delimiter="/"``, of every folder just below it (each object below
    such a folder is not listed then), a page of 1,000 at a time, keeping nothing else:
    s3fs's page iterator on S3, the JSON API's listing call through gcsfs on GCS."""
    if type(fs).__name__ == "S3FileSystem":
        async for info in fs._iterdir(bucket, delimiter=delimiter, prefix=prefix):
            folder = info.get("type") == "directory"
            yield info["name"], None if folder else info.get("size"), folder
        return
    token = None
    while True:
        page = await fs._call("GET", "b/{}/o", bucket, json_out=True, prefix=prefix or None, delimiter=delimiter or None,
                              maxResults=GCS_PAGE, pageToken=token, fields="items(name,size),prefixes,nextPageToken")
        for folder in page.get("prefixes", []):
            yield f"{bucket}/{folder.rstrip('/')}", None, True
        for item in page.get("items", []):
            yield f"{bucket}/{item['name']}", int(item["size"]) if item.get("size") is not None else None, False
        token = page.get("nextPageToken")
        if not token:
            return


def _store_files(fs, path: str, wanted) -> dict[str, int | None]:
    """Every object below the folder ``path`` of an object store that ``wanted`` keeps, with its size.

    fsspec's find gathers every object's details (about 1.2 KB each from s3fs, 1.9 KB from
    gcsfs) before it returns: 15 GB in the driver at the peak of a 10-million-object
    listing on S3. On S3 and GCS the pages are taken one at a time instead, keeping only
    names and sizes; the same requests, one per 1,000 objects. gcsfs's find also stops at
    10,000,000 objects without a word (its listing's default `max_results`): the objects
    past it were left out of the run. A versioned filesystem, and other stores, go through
    find; so does S3 or GCS should the client's page call change."""
    if not _paged(fs):
        return _found(fs, path, wanted)
    from fsspec.asyn import sync

    bucket, key, _ = fs.split_path(path)
    prefix = key.rstrip("/") + "/" if key else ""

    async def listed() -> dict[str, int | None]:
        return {name: size async for name, size, folder in _entries(fs, bucket, prefix)
                if not folder and wanted(name)}

    try:
        return sync(fs.loop, listed)
    except (AttributeError, TypeError):  # the page calls are the clients' own: should they change, list as before
        return _found(fs, path, wanted)


def _found(fs, path: str, wanted) -> dict[str, int | None]:
    return {p: info.get("size") for p, info in fs.find(path, detail=True).items() if wanted(p)}


def _store_glob(fs, path: str) -> dict[str, int | None] | None:
    """The files a glob on S3 or GCS matches, with their sizes, as fsspec's glob matches
    them (its pattern, fsspec.utils.glob_translate), and every file in a folder it matches;
    None for another store (or should the clients' page calls change).

    fsspec's glob lists everything below the glob's root, to the glob's depth, folder after
    folder, before it matches: for `s3://b/crawl/*/warc/*.gz` every segment's `wet/`, `wat/`
    and `robotstxt/` too (on GCS everything below the root, flat, and only its first
    10,000,000 objects: the rest left out in silence), the details of each object kept.
    Here a path is expanded a part at a time, as Hadoop's glob (Spark's) does: a literal
    part is appended without a request; a part with glob characters lists only the folders
    matched so far, one level down, only names that start with the part's literal stem
    (`2026-11-2*` lists `2026-11-2`...), STORE_REQUESTS folders at a time. From a `**`
    part on, each folder matched so far is listed flat and every object below it matched
    against the whole pattern. A page at a time, keeping names and sizes only."""
    if not _paged(fs) or path.endswith("/"):
        return None
    import asyncio

    from fsspec.asyn import sync
    from fsspec.utils import glob_translate

    from headrace.storage import STORE_REQUESTS

    bucket, key, _ = fs.split_path(path)
    if any(ch in bucket for ch in GLOB_CHARS) or not key:
        return None
    parts = key.split("/")
    root = _glob_root(path)

    def stem(part: str) -> str:
        return part[:min([i for i in (part.find(ch) for ch in GLOB_CHARS) if i >= 0], default=len(part))]

    def below(folder: str, name: str = "") -> str:
        """The key prefix of ``name`` in ``folder`` (`bucket/a` -> `a/name`)."""
        key = folder.partition("/")[2]
        return (key + "/" if key else "") + name

    async def each(folders: list[str], list_one) -> list:
        """``list_one(folder)`` of every folder, by STORE_REQUESTS workers (not a task a folder:
        a glob may match a hundred thousand)."""
        results: list = [None] * len(folders)
        work = iter(enumerate(folders))

        async def worker() -> None:
            for index, folder in work:
                results[index] = await list_one(folder)

        workers = [asyncio.ensure_future(worker()) for _ in range(min(STORE_REQUESTS, len(folders)))]
        try:
            await asyncio.gather(*workers)
        except BaseException:  # a failed listing fails the glob's: the other workers stop too
            for task in workers:
                task.cancel()
            raise
        return results

    async def matched() -> dict[str, int | None]:
        folders = [bucket]
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            if "**" in part:
                return await flat(folders, stem(part), re.compile(glob_translate(path)))
            if not last and not any(ch in part for ch in GLOB_CHARS):
                folders = [f"{folder}/{part}" for folder in folders]
                continue
            pattern = re.compile(glob_translate("/".join([bucket, *parts[:index + 1]])))

            async def level(folder: str) -> tuple[list[str], dict[str, int | None]]:
                found, files = [], {}
                async for name, size, is_folder in _entries(fs, bucket, below(folder, stem(part)), "/"):
                    if pattern.match(name) and not _folder_marker(name):
                        if is_folder:
                            found.append(name)
                        elif last:
                            files[name] = size
                return found, files

            listed = await each(folders, level)
            folders = [name for found, _ in listed for name in found]
        files = {name: size for _, got in listed for name, size in got.items()}
        # The folders the last part matches are read whole.
        for got in await each(folders, lambda folder: flat([folder], "", None)):
            files.update(got)
        return {name: size for name, size in files.items() if not _hidden(name, root)}

    async def flat(folders: list[str], first: str, pattern) -> dict[str, int | None]:
        """Every object below ``folders`` (whose key goes on with ``first``) that ``pattern``
        matches or lies in a folder it matches (every object, without a pattern)."""
        slash = "/" if path.endswith("/**") else ""  # as fsspec matches a folder where a glob ends in `/**`

        async def objects(folder: str) -> dict[str, int | None]:
            kept: dict[str, int | None] = {}
            async for name, size, is_folder in _entries(fs, bucket, below(folder, first)):
                if is_folder or _folder_marker(name) or _hidden(name, root):
                    continue
                end = len(name)
                while pattern is not None and end > len(folder):
                    if pattern.match(name[:end] + (slash if end < len(name) else "")):
                        break
                    end = name.rfind("/", 0, end)
                if pattern is None or end > len(folder):
                    kept[name] = size
            return kept

        kept: dict[str, int | None] = {}
        for got in await each(folders, objects):
            kept.update(got)
        return kept

    try:
        return sync(fs.loop, matched)
    except (AttributeError, TypeError):  # the page calls are the clients' own: should they change, list as before
        return None


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
    "matched no files"). Hidden names (`_SUCCESS`, `.crc`, `_temporary/`) below the glob's
    root are left out, in a matched folder too: `crawl/*` never reads a job's
    `crawl/_temporary/`, as Spark passes over the `_` and `.` paths a glob matches."""
    kept = {p: size for p, size in files.items() if not _hidden(p, root)}
    for folder in _outermost(folders):
        kept.update({p: size for p, size in files_in(folder).items() if not _hidden(p, root)})
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
