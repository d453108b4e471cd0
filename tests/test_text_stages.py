"""Decoding, HTML to text and chunking on real inputs and the real tokenizer."""

import pyarrow as pa
import pytest

from pipelines.demo_data import html_document
from stages.text import (
    ChunkText,
    DecodeText,
    EmptyDocument,
    NoVisibleText,
    UndecodableText,
    default_model_path,
    load_tokenizer,
    visible_text,
    word_windows,
)


def test_visible_text_drops_scripts_styles_and_navigation():
    html = (
        "<html><head><title>T</title><style>p{}</style></head><body><nav>Home About</nav>"
        "<header>Site header</header><p>First <b>bold</b> para.</p><script>var x = 1;</script>"
        "<ul><li>one</li><li>two</li></ul><footer>Copyright</footer></body></html>"
    )
    text = visible_text(html)
    assert text.splitlines() == ["First bold para.", "one", "two"]
    with pytest.raises(NoVisibleText):
        visible_text("<html><body><nav>menu</nav><script>x()</script></body></html>")


def test_decode_detects_legacy_charsets_and_rejects_binary_and_empty():
    decode = DecodeText().decode
    assert decode("Crème brûlée à Zürich, déjà vu. " .encode("cp1252") * 4).startswith("Crème brûlée")
    assert decode("\ufeffbom text".encode("utf-8")) == "bom text"
    with pytest.raises(EmptyDocument):
        decode(b"")
    with pytest.raises(EmptyDocument):
        decode(b" \n\t ")
    with pytest.raises(UndecodableText):
        decode(bytes(range(256)) * 16)


def test_word_windows_respect_the_limit_and_word_boundaries():
    words = [0, 0, 1, 2, 2, 2, 3, 4, 4, 5]
    spans = word_windows(words, 4)
    assert spans == [(0, 3), (3, 7), (7, 10)]
    assert word_windows([7] * 10, 4) == [(0, 4), (4, 8), (8, 10)]  # one huge word is cut


def test_chunks_fit_the_model_and_tokenize_back_to_their_ids():
    import random

    text = visible_text(html_document(random.Random(1), "Long", 40)) + " unbelievably antidisestablishmentarianism"
    table = pa.table({"doc_id": ["a"], "source": ["file:///a.html"], "text": [text]})
    out = ChunkText(max_tokens=64).process(table)
    assert out.num_rows > 5
    tokenizer = load_tokenizer(default_model_path())
    for row in out.to_pylist():
        assert len(row["input_ids"]) <= 64
        assert tokenizer.encode(row["text"]).ids == row["input_ids"]
        assert row["num_chunks"] == out.num_rows
    assert out.column("chunk_index").to_pylist() == list(range(out.num_rows))
    # Nothing is lost between chunks: the words of the document are all there, in order.
    assert "".join("".join(out.column("text").to_pylist()).split()) == "".join(text.split())


def test_hostile_nesting_is_refused_quickly():
    import time

    from stages.text import HtmlTooDeep

    html = "<html><body>" + "<div>" * 100_000 + "deep" + "</div>" * 100_000 + "</body></html>"
    started = time.perf_counter()
    with pytest.raises(HtmlTooDeep, match="100,000 elements deep"):
        visible_text(html)
    assert time.perf_counter() - started < 5  # parsing it would take about a minute
    assert visible_text("<div>" * 50 + "fine" + "</div>" * 50) == "fine"
