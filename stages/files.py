"""Reading files listed by a ``headrace.Files`` source."""

from __future__ import annotations

import fsspec
import pyarrow as pa

from headrace import Stage


class FileTooLarge(ValueError):
    pass


class ReadFiles(Stage):
    """Read each file's bytes through fsspec. A file that cannot be read is quarantined."""

    needs = ("source",)
    adds = {"bytes": pa.large_binary()}
    batch_size = 16

    def __init__(self, max_bytes: int = 64 * 2**20):
        self.max_bytes = max_bytes

    def process(self, batch: pa.Table) -> pa.Table:
        data = [self._read(uri) for uri in batch.column("source").to_pylist()]
        return batch.append_column("bytes", pa.array(data, pa.large_binary()))

    def _read(self, uri: str) -> bytes:
        with fsspec.open(uri, "rb") as handle:
            size = getattr(handle, "size", None)
            if size is not None and size > self.max_bytes:
                raise FileTooLarge(f"file is larger than {self.max_bytes:,} bytes ({size:,})")
            data = handle.read(self.max_bytes + 1)
        if len(data) > self.max_bytes:
            raise FileTooLarge(f"file is larger than {self.max_bytes:,} bytes")
        return data
