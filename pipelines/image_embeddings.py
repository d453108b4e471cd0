"""Image embeddings: JPEG, PNG, WebP, GIF and BMP files -> a transformers vision model -> Parquet.

    headrace submit pipelines/image_embeddings.py --conf input='photos/{ds}/**' \
        --conf model=/models/vit-base --conf output=out/image_emb
"""

from __future__ import annotations

from headrace import ConfigError, Files, Pipeline, output_sink
from schemas.image_embeddings import image_embeddings_schema
from stages.files import ReadFiles
from stages.images import DEFAULT_MAX_PIXELS, DecodeImage, EmbedImages

EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")


def pipeline(
    input: str = "data/sample/images",
    output: str = "output/image_embeddings",
    model: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    embed_batch_size: int = 32,
    embed_gpus: float = 1.0,
    embed_precision: str = "auto",
    rows_per_file: int = 20_000,
    max_quarantine_fraction: float = 0.5,
    output_format: str = "parquet",
) -> Pipeline:
    """``model`` is a local folder with a transformers vision model and its image processor."""
    if not model:
        raise ConfigError("pipeline image_embeddings needs --conf model=/path/to/vision-model (a local folder)")
    decode = DecodeImage(model=model, max_pixels=max_pixels)
    embed = EmbedImages(model=model, shape=decode.shape, precision=embed_precision)
    return Pipeline(
        name="image_embeddings",
        source=Files(input, extensions=EXTENSIONS, id_column="image_id"),
        stages=[ReadFiles(), decode, embed.with_(batch_size=embed_batch_size, gpus=embed_gpus)],
        schema=image_embeddings_schema(embed.adds["embedding"].list_size),
        sink=output_sink(output, output_format, rows_per_file=rows_per_file),
        max_quarantine_fraction=max_quarantine_fraction,
        columns=["image_id", "source", "width", "height", "embedding", "model"],
    )
