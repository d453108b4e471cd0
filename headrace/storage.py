"""Output storage: every file operation of the sink goes through fsspec and is retried.

Object stores and network disks fail now and then with timeouts, dropped connections
or 429/5xx answers. Each operation here is retried with exponential backoff when the
failure is transient; a permanent one (permission denied, no such bucket) is raised at
once. A reader or a retried task never sees half a file: on a local disk a write goes
to a hidden temporary name and is renamed into place; on an object store (s3://, gs://)
an object becomes visible only when its upload completes, so it is written in place.
Object stores have no rename: there a "rename" is a server-side copy and a delete.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import posixpath
import stat
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from headrace.errors import ConfigError
from headrace.retry import retrying

log = logging.getLogger("headrace")
T = TypeVar("T")


def absolute_url(url: str, what: str = "path") -> str:
    """``url`` with a protocol and, for local paths, an absolute path: resolved here, on the
    driver, so that workers with another working directory read and write the same place.
    An empty one is a ConfigError naming ``what`` (``input``, ``output``): it would
    otherwise mean the working directory (an unset variable in a scheduler's command)."""
    protocol, path = fsspec.core.split_protocol((url or "").strip())
    if not path:
        raise ConfigError(f"{what} is empty: give a path or URL (got {url!r})")
    if protocol in (None, "file", "local"):
        return "file://" + os.path.abspath(os.path.expanduser(path))
    return url


def known_url(url: str, what: str = "path") -> str:
    """absolute_url, whose protocol fsspec must know (its package installed): else a
    ConfigError naming ``what``, as a run's output is checked."""
    url = absolute_url(url, what)
    try:
        fsspec.get_filesystem_class(fsspec.core.split_protocol(url)[0] or "file")
    except (ImportError, ValueError) as exc:
        raise ConfigError(f"{what} {url!r}: {exc}") from exc
    return url


def output_url(url: str) -> str:
    """known_url for an output, which on an object store may not hold glob characters (`*`,
    `?`, `[`): fsspec reads them as a pattern in a path it removes, copies or lists
    recursively, so a run on `s3://lake/exp[1]/emb` committed, left its staging area and
    its lock behind (their removal matched nothing), and every later run of the date was
    turned away by that lock. AWS lists `[` and `]` among the characters to avoid in keys.
    On a local disk they work (headrace uses the operating system's calls there)."""
    url = known_url(url, "output")
    protocol, path = fsspec.core.split_protocol(url)
    if protocol not in (None, "file", "local") and any(ch in path for ch in "*?["):
        raise ConfigError(f"output {url!r}: glob characters (*, ?, [) cannot be part of an output "
                          f"on {protocol}:// (fsspec reads them as a pattern): rename it")
    return url


STORE_REQUESTS = 16  # requests to a store at once where the driver has many files to copy, remove or read


def at_once(work: Callable[[T], Any], items: list[T], threads: int = STORE_REQUESTS) -> list[Any]:
    """``work`` on every item, ``threads`` at a time, results in order; the first error is
    raised once all have ended (none is left running behind the caller). One after another,
    a store's round trips (tens of ms each, a server-side copy of a large file longer) add up
    to minutes for the thousands of files of a large run."""
    if len(items) <= 1 or threads <= 1:
        return [work(item) for item in items]
    with ThreadPoolExecutor(min(threads, len(items))) as pool:
        futures = [pool.submit(work, item) for item in items]
    return [future.result() for future in futures]


def sync_folder(path: str) -> None:
    """fsync a local folder, so that the names made or removed in it last through a power
    loss or a host crash. A file is fsynced before it is named (Storage writes), and the
    folder after: else a crash could keep a name (a part's progress file, a partition's
    _SUCCESS) whose data never reached the disk (ext4's delayed allocation leaves a new
    file empty for up to 30 s after its rename is in the journal). Filesystems that cannot
    fsync a folder are left as they are."""
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(descriptor)


class NotARegularFile(OSError):
    """A named pipe, socket or device where a file was listed: never opened (a pipe's open
    waits for a writer, for ever)."""


_SPECIAL = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
            (stat.S_ISBLK, "a block device"))


def refuse_special_file(uri: str) -> None:
    """Raise NotARegularFile where a local ``uri`` (through links) is not a regular file;
    nothing is opened. Other stores hold only objects."""
    protocol, path = fsspec.core.split_protocol(uri)
    if protocol not in (None, "file", "local"):
        return
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # a missing file or a broken link: opening it says why
    for test, kind in _SPECIAL:
        if test(mode):
            raise NotARegularFile(f"{path} is {kind}, not a regular file: it is not read")


def check_writable(storage: "Storage", path: str, what: str = "output") -> None:
    """A local ``path`` a run could not write is configuration (exit 2), found before Ray
    starts and by --dry-run: a file where a folder is needed, or a nearest existing folder
    this user may not write in (probed with an unnamed temporary file, which leaves
    nothing behind). A bucket's permissions are found at the run's first write."""
    if not storage.local:
        return
    folder = path
    while not os.path.lexists(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise ConfigError(f"cannot write the {what} at {path}: {folder} is a file, not a folder")
    try:
        probe_write(folder)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise ConfigError(f"cannot write the {what} at {path}: {exc.strerror} (in {folder})") from None


def probe_write(folder: str) -> None:
    """Raise OSError where this process may not create a file in the local ``folder``;
    an unnamed temporary file (O_TMPFILE) leaves nothing behind. Unlike os.access, it
    answers for the process's capabilities, not only its user ids."""
    with tempfile.TemporaryFile(dir=folder):
        pass


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return "file" in protocols or getattr(fs, "local_file", False)


def read_small(fs: fsspec.AbstractFileSystem, path: str) -> bytes:
    """A small file's bytes (a manifest, a progress file, a lock) in one request. Asked
    for a whole object, s3fs first asks its size (a HEAD) so as to fetch a large one in
    parallel: two round trips for every manifest read. A range from byte 0 is one GET. An
    empty object refuses every range (416), so a refused range is read plainly."""
    try:
        return fs.cat_file(path, start=0)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except OSError:
        return fs.cat_file(path)


def parquet_file(data: bytes) -> pq.ParquetFile:
    """A Parquet file from its bytes, copied first into memory Arrow owns (see parquet_table)."""
    sink = pa.BufferOutputStream()
    sink.write(data)
    return pq.ParquetFile(pa.BufferReader(sink.getvalue()))


def parquet_table(data: bytes, columns: list[str] | None = None) -> pa.Table:
    """A Parquet file's rows from its bytes, copied first into memory Arrow owns.

    Arrow's threads must never hold a Python object: a file object, or a buffer over
    Python bytes, that one of them lets go of after the read has returned (a read-ahead
    future, a column reader) makes that thread take the GIL, and where the interpreter is
    exiting by then the process aborts (SIGABRT, "terminate called without an active
    exception"; apache/arrow#34314). A script that read the output and exited at once
    aborted in about half of its runs here."""
    return parquet_file(data).read(columns=columns)


@contextlib.contextmanager
def _naming(path: str):
    """An OSError that names no file gets ``path``: a write into a full disk said only
    ``OSError: [Errno 28] No space left on device``, not which disk."""
    try:
        yield
    except OSError as exc:
        if exc.errno is not None and exc.filename is None:
            exc.filename = path
        raise


class Storage:
    """An fsspec filesystem with retried operations on absolute paths of that filesystem."""

    def __init__(self, fs: fsspec.AbstractFileSystem, retries: int = 5, backoff_s: float = 0.2):
        self.fs = fs
        self.retries = retries
        self.backoff_s = backoff_s

    @property
    def local(self) -> bool:
        """A local (or mounted) filesystem, with atomic renames."""
        return is_local(self.fs)

    def url(self, path: str) -> str:
        """``path`` with its protocol, as a reader elsewhere needs it."""
        return path if self.local else self.fs.unstrip_protocol(path)

    def retry(self, what: str, operation: Callable[[], T]) -> T:
        return retrying(operation, self.retries, self.backoff_s, what)

    # -- files -----------------------------------------------------------------

    def write_parquet(self, table: pa.Table, path: str, compression: str = "zstd") -> int:
        """Write ``table`` to ``path`` atomically; returns the file's size in bytes."""

        def write(handle) -> None:
            pq.write_table(table, handle, compression=compression)

        return self._write(path, write)

    def write_json(self, path: str, document: Any) -> None:
        data = json.dumps(document, indent=2, default=str).encode()
        self._write(path, lambda handle: handle.write(data))

    def _write(self, path: str, write: Callable[[Any], None]) -> int:
        with _naming(path):
            return self._write_unnamed(path, write)

    def _write_unnamed(self, path: str, write: Callable[[Any], None]) -> int:
        if not self.local:
            def upload() -> None:
                with self.fs.open(path, "wb") as handle:
                    write(handle)

            self.retry(f"write {path}", upload)
            return self.retry(f"size of {path}", lambda: self.fs.size(path))
        directory, name = posixpath.split(path)
        temporary = posixpath.join(directory, f".{name}.{uuid.uuid4().hex[:8]}.tmp")

        def attempt() -> None:
            with self.fs.open(temporary, "wb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())  # on the disk before its name is: see sync_folder

        try:
            self.retry(f"write {path}", attempt)
            self.rename(temporary, path)
            sync_folder(directory)
        except BaseException:
            try:
                self.remove(temporary, missing_ok=True)
            except Exception:  # noqa: BLE001 - the original failure is the one to report
                log.warning("could not remove %s", temporary)
            raise
        return self.retry(f"size of {path}", lambda: self.fs.size(path))

    def read_parquet(self, path: str) -> pa.Table:
        return self.retry(f"read {path}", lambda: parquet_table(self.fs.cat_file(path)))

    def read_parquet_schema(self, path: str) -> pa.Schema:
        def read() -> pa.Schema:
            with self.fs.open(path, "rb") as handle:
                return pq.read_schema(handle)

        return self.retry(f"read the schema of {path}", read)

    def read_json(self, path: str) -> Any:
        return json.loads(self.retry(f"read {path}", lambda: read_small(self.fs, path)))

    def create_only(self, path: str, data: bytes) -> None:
        """Write ``path`` only if it does not exist (O_EXCL, S3 If-None-Match, GCS
        ifGenerationMatch=0); FileExistsError otherwise."""
        self.retry(f"create {path}", lambda: self.fs.pipe_file(path, data, mode="create"))

    def read_bytes(self, path: str) -> bytes:
        return self.retry(f"read {path}", lambda: read_small(self.fs, path))

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write ``data`` to ``path`` atomically (whole or not at all)."""
        self._write(path, lambda handle: handle.write(data))

    def copy(self, source: str, target: str) -> None:
        """A server-side copy on object stores."""
        if self.local:
            self.makedirs(posixpath.dirname(target))
        self.retry(f"copy {source} -> {target}", lambda: self.fs.cp_file(source, target))

    def rename(self, source: str, target: str) -> None:
        if not self.local:  # no rename on object stores (and no moveTo on the GCS emulator)
            self.copy(source, target)
            self.remove(source, missing_ok=True)
            return

        def move() -> None:
            try:
                self.fs.mv(source, target)
            except FileNotFoundError:
                # An earlier attempt may have moved it before its answer was lost.
                if self.fs.exists(source) or not self.fs.exists(target):
                    raise

        self.retry(f"rename {source} -> {target}", move)

    def remove(self, path: str, recursive: bool = False, missing_ok: bool = False) -> None:
        def remove() -> None:
            try:
                self.fs.rm(path, recursive=recursive)
            except FileNotFoundError:
                if not missing_ok:
                    raise

        self.retry(f"remove {path}", remove)

    def exists(self, path: str) -> bool:
        return self.retry(f"look up {path}", lambda: self.fs.exists(path))

    def makedirs(self, path: str) -> None:
        self.retry(f"create {path}", lambda: self.fs.makedirs(path, exist_ok=True))

    def listdir(self, path: str) -> list[str]:
        """Names (not paths) of the entries of ``path``; empty when it does not exist."""
        def listing() -> list[str]:
            # Other processes write here: neither trust nor keep a cached listing (s3fs and
            # gcsfs would answer later look-ups of new files from it with FileNotFoundError).
            self.fs.invalidate_cache(path)
            try:
                entries = self.fs.ls(path, detail=False)
            except FileNotFoundError:
                return []
            finally:
                self.fs.invalidate_cache(path)
            return sorted(posixpath.basename(str(e).rstrip("/")) for e in entries)

        return self.retry(f"list {path}", listing)
