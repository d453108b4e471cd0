"""Reading files listed by a ``headrace.Files`` source."""

from __future__ import annotations

import errno

import fsspec
import pyarrow as pa

from headrace import Stage
from headrace.storage import refuse_special_file


class FileTooLarge(ValueError):
    pass


class ReadFiles(Stage):
    """Read each file's bytes through fsspec. A file that cannot be read is quarantined.

    On an object store (s3://, gs://) the files of a batch are fetched concurrently, each
    with one ranged GET of at most ``max_bytes`` + 1 bytes.
    """

    needs = ("source",)
    adds = {"bytes": pa.large_binary()}
    batch_size = 16

    def __init__(self, max_bytes: int = 64 * 2**20):
        self.max_bytes = max_bytes

    def process(self, batch: pa.Table) -> pa.Table:
        uris = batch.column("source").to_pylist()
        fs, _ = fsspec.core.url_to_fs(uris[0]) if uris else (None, None)
        if fs is not None and fs.async_impl and len({u.split("://", 1)[0] for u in uris}) == 1:
            data = self._fetch_concurrently(fs, uris)
        else:
            data = [self._read(uri) for uri in uris]
        return batch.append_column("bytes", pa.array(data, pa.large_binary()))

    def _fetch_concurrently(self, fs, uris: list[str]) -> list[bytes]:
        paths = [fs._strip_protocol(uri) for uri in uris]
        results = fs.cat_ranges(paths, [0] * len(paths), [self.max_bytes + 1] * len(paths), on_error="return")
        # S3 answers a ranged GET of an empty object with 416: it is an empty file.
        results = [b"" if _unsatisfiable_range(r) else r for r in results]
        for result in results:
            if isinstance(result, BaseException):
                raise result  # the batch is split until the record at fault is alone
        for result in results:
            if len(result) > self.max_bytes:
                raise FileTooLarge(f"file is larger than {self.max_bytes:,} bytes")
        return results

    def _read(self, uri: str) -> bytes:
        refuse_special_file(uri)  # a named pipe would wait for a writer for ever
        with fsspec.open(uri, "rb") as handle:
            size = getattr(handle, "size", None)
            if size is not None and size > self.max_bytes:
                raise FileTooLarge(f"file is larger than {self.max_bytes:,} bytes ({size:,})")
            data = handle.read(self.max_bytes + 1)
        if len(data) > self.max_bytes:
            raise FileTooLarge(f"file is larger than {self.max_bytes:,} bytes")
        return data


def _unsatisfiable_range(result) -> bool:
    return isinstance(result, OSError) and result.errno == errno.EINVAL and "range" in str(result).lower()
