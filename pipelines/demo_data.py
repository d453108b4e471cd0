"""Sample documents for trying headrace: HTML, markdown and text of realistic lengths, plus a few broken files."""

from __future__ import annotations

import os
import random

WORDS = """
the of and to in is that for it as was with be by on not he this are or his from at
which but have an they you were her she there been one all we their has would when
if so no what up out about into than them can only other new some could time these
two may then do first any my now such like our over man me even most made after also
did many before must through back years where much your way well down should because
each just those people how too little state good very make world still own see men
work long here get both between life being under never day same another know while
last might us great old year off come since against go came right used take three
river water valley stream current model data pipeline record batch stage worker
cluster memory disk network storage bucket region schedule nightly report output
input token chunk vector embedding search index query document page section title
summary author editor archive library museum history science physics biology energy
market price trade policy council election city village harbour bridge railway
mountain forest garden season winter summer spring autumn weather storm coast island
""".split()

NAV = '<nav><ul><li><a href="/">Home</a></li><li><a href="/about">About</a></li><li><a href="/contact">Contact</a></li></ul></nav>'
SCRIPT = '<script>window.dataLayer = window.dataLayer || []; function gtag(){dataLayer.push(arguments);}</script>'
STYLE = "<style>body { font-family: serif; } .nav { color: #333; }</style>"


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(6, 22))]
    return " ".join(words).capitalize() + rng.choice([".", ".", ".", "?", "!"])


def _paragraph(rng: random.Random, sentences: int) -> str:
    return " ".join(_sentence(rng) for _ in range(sentences))


def _length(rng: random.Random) -> int:
    """Paragraph count: mostly short pages, a long tail of long ones."""
    bucket = rng.random()
    if bucket < 0.45:
        return rng.randint(1, 3)
    if bucket < 0.85:
        return rng.randint(4, 15)
    return rng.randint(16, 60)


def html_document(rng: random.Random, title: str, paragraphs: int) -> str:
    body = []
    for index in range(paragraphs):
        if index % 5 == 0:
            body.append(f"<h2>{_sentence(rng)[:-1]}</h2>")
        if index % 7 == 3:
            items = "".join(f"<li>{_sentence(rng)}</li>" for _ in range(3))
            body.append(f"<ul>{items}</ul>")
        body.append(f"<p>{_paragraph(rng, rng.randint(2, 6))}</p>")
    return (
        f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{title}</title>{STYLE}{SCRIPT}</head>"
        f"<body><header>{NAV}</header><main><article><h1>{title}</h1>{''.join(body)}</article></main>"
        f"<footer>Copyright 2026 Example Press. All rights reserved.</footer></body></html>"
    )


def markdown_document(rng: random.Random, title: str, paragraphs: int) -> str:
    parts = [f"# {title}\n"]
    for index in range(paragraphs):
        if index % 4 == 2:
            parts.append(f"## {_sentence(rng)[:-1]}\n")
        if index % 6 == 5:
            parts.append("\n".join(f"- {_sentence(rng)}" for _ in range(3)) + "\n")
        parts.append(_paragraph(rng, rng.randint(2, 6)) + "\n")
    return "\n".join(parts)


def text_document(rng: random.Random, title: str, paragraphs: int) -> str:
    return title + "\n\n" + "\n\n".join(_paragraph(rng, rng.randint(2, 6)) for _ in range(paragraphs)) + "\n"


def broken_documents(rng: random.Random) -> dict[str, bytes]:
    """Files a real crawl contains: each must end up in the quarantine with its reason."""
    return {
        "broken/corrupt.html": bytes(rng.getrandbits(8) for _ in range(4096)),
        "broken/empty.txt": b"",
        "broken/no-visible-text.html": f"<html><head>{STYLE}{SCRIPT}</head><body>{NAV}</body></html>".encode(),
        "broken/binary.md": b"\x89PNG\r\n\x1a\n" + bytes(rng.getrandbits(8) for _ in range(2048)),
    }


def write_images(directory: str, count: int = 24, seed: int = 7) -> list[str]:
    """Small images in every format and mode the image pipeline reads, plus two broken ones."""
    import io

    from PIL import Image

    rng = random.Random(seed)
    formats = [("jpg", "JPEG", "RGB"), ("png", "PNG", "RGBA"), ("png", "PNG", "P"), ("webp", "WEBP", "RGB"),
               ("gif", "GIF", "P"), ("bmp", "BMP", "RGB"), ("jpeg", "JPEG", "L")]
    written, first = [], b""
    for index in range(count):
        suffix, fmt, mode = formats[index % len(formats)]
        width, height = rng.randint(32, 320), rng.randint(32, 320)
        image = Image.new("RGB", (width, height), tuple(rng.randint(0, 255) for _ in range(3)))
        for _ in range(6):  # a few rectangles, so images differ
            x, y = rng.randint(0, width - 1), rng.randint(0, height - 1)
            image.paste(tuple(rng.randint(0, 255) for _ in range(3)), (x, y, min(width, x + 40), min(height, y + 40)))
        buffer = io.BytesIO()
        image.convert(mode).save(buffer, fmt)
        first = first or buffer.getvalue()
        written.append(_write(directory, f"images/img-{index:03d}.{suffix}", buffer.getvalue()))
    written.append(_write(directory, "images/broken/truncated.jpg", first[: len(first) // 2]))
    written.append(_write(directory, "images/broken/not-an-image.png", b"this is text, not a PNG"))
    return written


def write_documents(directory: str, count: int = 300, seed: int = 7) -> list[str]:
    """Write ``count`` good documents (and a few broken ones) under ``directory``."""
    rng = random.Random(seed)
    written = []
    for index in range(count):
        title = _sentence(rng)[:-1].title()
        kind = ("html", "md", "txt")[index % 3]
        paragraphs = _length(rng)
        if kind == "html":
            data = html_document(rng, title, paragraphs).encode()
        elif kind == "md":
            data = markdown_document(rng, title, paragraphs).encode()
        elif index % 30 == 2:  # legacy encodings are text too: charset detection decodes them
            data = (text_document(rng, title, paragraphs) + "Café crème, naïve façade, Zürich.\n").encode("cp1252")
        else:
            data = text_document(rng, title, paragraphs).encode()
        written.append(_write(directory, f"{kind}/doc-{index:05d}.{kind}", data))
    for name, data in broken_documents(rng).items():
        written.append(_write(directory, name, data))
    return written


def _write(directory: str, name: str, data: bytes) -> str:
    path = os.path.join(directory, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)
    return path
