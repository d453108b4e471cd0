"""WARC and WET records for ``stages.tables.ReadTable``.

Framing (where each record starts and ends) is done here, so that a byte range of a
file can be read on its own and a broken record is quarantined alone; parsing a record
(WARC and HTTP headers, payload, block digest) is FastWARC's.

- ``.warc.gz`` / ``.wet.gz``: each record is its own gzip member (the WARC standard's
  recommendation, and how Common Crawl writes them). A member starts with the gzip magic
  and decompresses to ``WARC/1.``; a range's reader starts at the first such member at or
  after its start. A member that does not decompress (corrupt, or cut off by the end of
  the file) is quarantined at its offset and reading resumes at the next member.
- ``.warc`` / ``.wet``: a record is its header, ``Content-Length`` bytes of block and a
  blank line. A range's reader starts at the first ``WARC/1.`` line at or after its start
  that frames a whole record. A record whose block is cut short, or whose
  ``WARC-Block-Digest`` does not match, is quarantined; reading resumes at the next
  record header (a line ``WARC/1.x`` starting a header with ``WARC-Type`` and
  ``Content-Length``: an archived WARC file inside a record's payload would look the same,
  so prefer per-record gzip, which cannot be confused).

A record's offset is where it starts in the file (its gzip member's start when
compressed). Only records that carry a document are rows: ``response`` (an HTTP
response: the payload after the HTTP headers), ``resource`` and ``conversion`` (WET's
extracted text). ``warcinfo``, ``request``, ``metadata`` and ``revisit`` records describe
a crawl, not a document, and are skipped as a CSV file's header is.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Iterator

GZIP_MAGIC = b"\x1f\x8b\x08"
WARC_MAGIC = b"WARC/1."
CHUNK = 1 << 16
MAX_RECORD = 256 * 2**20  # a record (decompressed) larger than this is quarantined, not read
MAX_HEADER = 1 << 20
FIELDS = ("url", "date", "warc_type", "warc_record_id", "content_type", "http_status", "text")
DOCUMENT_TYPES = ("response", "resource", "conversion")
HTML_TYPES = ("text/html", "application/xhtml+xml")


class BadRecord(ValueError):
    """A record that cannot be read; the message says why."""


def framed(handle, start: int, stop: int, compressed: bool) -> Iterator[tuple[int, bytes | None, str | None]]:
    """(offset, the record's bytes (decompressed), None) for every record that starts in
    [start, stop), or (offset, None, reason) for one that cannot be read."""
    frame = _gzip_member if compressed else _plain_record
    find = _next_member if compressed else _next_header
    magic = GZIP_MAGIC if compressed else WARC_MAGIC
    position = find(handle, start, stop)
    while position is not None and position < stop:
        try:
            raw, end = frame(handle, position)
        except BadRecord as exc:
            yield position, None, str(exc)
            position = find(handle, position + 1, stop)
            continue
        yield position, raw, None
        handle.seek(end)
        head = handle.read(len(magic))
        if not head:
            return  # the end of the file
        position = end if head == magic else find(handle, end, stop)
        if position != end and end < stop:
            upto = f"up to offset {position}" if position is not None else "to the end of the range"
            yield end, None, f"bytes that are not a WARC record, {upto}"


def _gzip_member(handle, position: int) -> tuple[bytes, int]:
    handle.seek(position)
    inflate = zlib.decompressobj(wbits=31)
    out, size, read = [], 0, 0
    while not inflate.eof:
        chunk = handle.read(CHUNK)
        if not chunk:
            raise BadRecord("truncated gzip member: the file ends inside it")
        try:
            data = inflate.decompress(chunk)
        except zlib.error as exc:
            raise BadRecord(f"corrupt gzip member: {exc}") from None
        read += len(chunk)
        size += len(data)
        if size > MAX_RECORD:
            raise BadRecord(f"record larger than {MAX_RECORD:,} bytes decompressed (is the file compressed per record?)")
        out.append(data)
    return b"".join(out), position + read - len(inflate.unused_data)


def _plain_record(handle, position: int) -> tuple[bytes, int]:
    header = _header(handle, position)
    length = _content_length(header)
    if length > MAX_RECORD:
        raise BadRecord(f"record of {length:,} bytes, more than {MAX_RECORD:,}")
    block = handle.read(length + 4)
    if len(block) < length + 4 or not block.endswith(b"\r\n\r\n"):
        got = min(len(block), length)
        raise BadRecord(f"truncated record: Content-Length {length:,}, but the record ends after {got:,} bytes"
                        if len(block) < length + 4 else
                        f"the record does not end where its Content-Length of {length:,} says")
    return header + block, position + len(header) + len(block)


def readline(handle, limit: int) -> bytes:
    """The next line of ``handle``, or its first ``limit`` bytes where it is longer. fsspec's
    bucket files take no size in ``readline`` (TypeError: every JSON Lines file and plain
    WARC file on S3 or GCS failed whole); on them the line is cut from a read of ``limit``."""
    try:
        return handle.readline(limit)
    except TypeError:
        start = handle.tell()
        data = handle.read(limit)
        end = data.find(b"\n")
        if end >= 0:
            data = data[:end + 1]
            handle.seek(start + len(data))
        return data


def _header(handle, position: int) -> bytes:
    handle.seek(position)
    header = b""
    while not header.endswith(b"\r\n\r\n"):
        line = readline(handle, MAX_HEADER)
        if not line:
            raise BadRecord("truncated record header: the file ends inside it")
        header += line
        if len(header) > MAX_HEADER:
            raise BadRecord(f"record header longer than {MAX_HEADER:,} bytes")
    return header


def _content_length(header: bytes) -> int:
    if not header.startswith(WARC_MAGIC):
        raise BadRecord("not a WARC record header")
    for line in header.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            try:
                return int(value.strip())
            except ValueError:
                break
    raise BadRecord("record header has no valid Content-Length")


def _scan(handle, start: int, stop: int, magic: bytes, valid) -> int | None:
    """The first offset in [start, stop) where ``magic`` starts and ``valid(offset)`` holds."""
    position = start
    while position < stop:
        handle.seek(position)
        window = handle.read(CHUNK + len(magic) - 1)
        if not window:
            return None
        at = window.find(magic)
        while at != -1 and position + at < stop:
            if valid(position + at):
                return position + at
            at = window.find(magic, at + 1)
        position += CHUNK
    return None


def _next_member(handle, start: int, stop: int) -> int | None:
    def valid(offset: int) -> bool:
        handle.seek(offset)
        try:
            head = zlib.decompressobj(wbits=31).decompress(handle.read(4096), len(WARC_MAGIC))
        except zlib.error:
            return False
        return head == WARC_MAGIC

    return _scan(handle, start, stop, GZIP_MAGIC, valid)


def _next_header(handle, start: int, stop: int) -> int | None:
    def valid(offset: int) -> bool:
        if offset > 0:
            handle.seek(offset - 1)
            if handle.read(1) != b"\n":
                return False  # a header starts a line
        # A header that parses, even if its block is cut short: the record is then
        # quarantined by the split that owns it, not lost between two splits.
        try:
            header = _header(handle, offset)
            _content_length(header)
        except BadRecord:
            return False
        return b"\r\nWARC-Type:" in header

    return _scan(handle, start, stop, WARC_MAGIC, valid)


def document(raw: bytes, html_to_text: bool) -> dict | None:
    """The fields of one record (``FIELDS``), None for a record that is not a document;
    raises BadRecord (or a stage's decode error) for one that cannot be read."""
    from fastwarc.warc import ArchiveIterator

    record = next(iter(ArchiveIterator(io.BytesIO(raw), parse_http=False)), None)
    if record is None:
        raise BadRecord("FastWARC found no record in it")
    kind = (record.headers.get("WARC-Type") or "").strip().lower()
    if kind not in DOCUMENT_TYPES:
        return None
    if record.headers.get("WARC-Block-Digest") and not record.verify_block_digest(consume=False):
        raise BadRecord("WARC-Block-Digest does not match the block (corrupt record)")
    status, content_type, charset = None, record.headers.get("Content-Type", ""), None
    if kind == "response" and content_type.startswith("application/http"):
        record.parse_http()
        if record.http_headers is None:
            raise BadRecord("unreadable HTTP response header")
        status = record.http_headers.status_code
        content_type, charset = record.http_content_type or "", record.http_charset
    payload = record.reader.read()
    mime = content_type.split(";")[0].strip().lower()
    if kind != "conversion" and not (mime.startswith("text/") or mime in HTML_TYPES):
        raise BadRecord(f"payload is {mime or 'of no content type'}, not text")
    text = _decode(payload, charset)
    if html_to_text and mime in HTML_TYPES:
        from stages.text import visible_text

        text = visible_text(text)
    return {
        "url": record.headers.get("WARC-Target-URI"),
        "date": record.headers.get("WARC-Date"),
        "warc_type": kind,
        "warc_record_id": record.record_id,
        "content_type": mime or None,
        "http_status": status,
        "text": text,
    }


def _decode(payload: bytes, charset: str | None) -> str:
    from stages.text import DecodeText

    if charset:
        try:
            return payload.decode(charset)
        except (LookupError, UnicodeDecodeError):
            pass  # a wrong declaration is common: detect instead
    return DecodeText().decode(payload)
