"""The image pipeline on every format and mode it claims, plus broken files, with a real (tiny) model."""

import io
import os
import struct
import zlib

import numpy as np
import pyarrow.parquet as pq
import pytest

import headrace
from conftest import QUIET, write
from pipelines.image_embeddings import pipeline as image_embeddings

DS = "2026-05-01"


@pytest.fixture(scope="module")
def vision_model(tmp_path_factory):
    """A small ViT built from a config and saved to disk, so the real loading path runs."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    path = str(tmp_path_factory.mktemp("vit"))
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=64)
    ViTModel(config).save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def encoded(image, fmt, **options):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_declaring(width, height):
    """A valid PNG header claiming a huge canvas (a decompression bomb), with correct CRCs."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    from PIL import Image

    directory = str(tmp_path_factory.mktemp("images"))
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8), "RGB")  # 40 wide, 30 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display: true size 30 x 40
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    sixteen = Image.fromarray(rng.integers(0, 65535, (20, 25)).astype(np.uint16))
    assert sixteen.mode.startswith("I;16")
    good = {
        "rgb.jpg": (encoded(rgb, "JPEG"), (40, 30)),
        "rotated.jpg": (encoded(rgb, "JPEG", exif=exif), (30, 40)),
        "grey.jpeg": (encoded(rgb.convert("L"), "JPEG"), (40, 30)),
        "rgba.png": (encoded(rgb.convert("RGBA"), "PNG"), (40, 30)),
        "palette.png": (encoded(palette, "PNG", transparency=0), (40, 30)),
        "sixteen-bit.png": (encoded(sixteen, "PNG"), (25, 20)),
        "lossy.webp": (encoded(rgb, "WEBP"), (40, 30)),
        "animated.gif": (encoded(palette, "GIF"), (40, 30)),
        "plain.bmp": (encoded(rgb, "BMP"), (40, 30)),
    }
    jpeg = encoded(rgb, "JPEG")
    bad = {
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "corrupt.png": b"\x89PNG\r\n\x1a\n" + bytes(rng.integers(0, 255, 300, dtype=np.uint8)),
        "bomb.png": png_declaring(50_000, 50_000),
        "empty.gif": b"",
    }
    for name, (data, _) in good.items():
        write(directory, name, data)
    for name, data in bad.items():
        write(directory, name, data)
    return directory, {n: size for n, (_, size) in good.items()}, set(bad)


def test_every_format_and_mode_is_embedded_and_bad_files_quarantined(ray_cluster, vision_model, image_folder, tmp_path):
    directory, good, bad = image_folder
    result = headrace.run(
        image_embeddings(input=directory, output=str(tmp_path / "out"), model=vision_model, embed_batch_size=4), DS, QUIET
    )
    rows = pq.read_table(result.partition).to_pylist()
    sizes = {os.path.basename(r["source"]): (r["width"], r["height"]) for r in rows}
    assert sizes == good  # every good image, with its true (oriented) size
    embeddings = np.stack([r["embedding"] for r in rows])
    assert embeddings.shape == (len(good), 32)
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-3)

    quarantine = {os.path.basename(q["source"]): q for q in pq.read_table(result.quarantine).to_pylist()}
    assert set(quarantine) == bad
    assert quarantine["bomb.png"]["error_type"] == "ImageTooLarge" and "50,000 x 50,000" in quarantine["bomb.png"]["message"]
    assert "truncated" in quarantine["truncated.jpg"]["message"]
    assert quarantine["corrupt.png"]["error_type"] == "CorruptImage"
    assert quarantine["empty.gif"]["message"] == "empty file (0 bytes)"
    assert result.counts["input"] == len(good) + len(bad) and result.counts["input_quarantined_only"] == len(bad)


def test_image_pipeline_needs_a_model():
    with pytest.raises(headrace.ConfigError, match="needs --conf model="):
        image_embeddings(input="x")
