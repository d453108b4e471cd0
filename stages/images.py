"""Image stages: decode and preprocess on CPU tasks, embed with a transformers vision model."""

from __future__ import annotations

import functools
import io

import numpy as np
import pyarrow as pa

from headrace import Stage, fixed_size_list
from stages.models import TorchModel, check_precision

DEFAULT_MAX_PIXELS = 40_000_000  # about 200 MB as RGB; larger claims are decompression bombs


class ImageTooLarge(ValueError):
    pass


class CorruptImage(ValueError):
    pass


@functools.lru_cache(maxsize=4)
def load_processor(path: str):
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(path)


class DecodeImage(Stage):
    """Image bytes -> RGB (EXIF orientation applied) -> the model's pixel values.

    JPEG, PNG, WebP, GIF (first frame) and BMP in RGB, RGBA, palette, greyscale and
    16-bit modes. ``width``/``height`` are the oriented image's true size. Images that
    declare more than ``max_pixels`` are refused before decoding; truncated or corrupt
    files are quarantined with the decoder's reason.
    """

    needs = ("bytes",)
    drops = ("bytes",)
    batch_size = 16

    def __init__(self, model: str, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.model = model
        self.max_pixels = max_pixels
        # The processor's output shape, found once on a dummy image (any processor works).
        probe = load_processor(model)(images=[_blank()], return_tensors="np")["pixel_values"]
        self.shape = tuple(int(d) for d in probe.shape[1:])
        self.adds = {
            "width": pa.int32(),
            "height": pa.int32(),
            "pixel_values": pa.list_(pa.float32(), int(np.prod(self.shape))),
        }

    def state_paths(self) -> list[str]:
        return [self.model]

    def process(self, batch: pa.Table) -> pa.Table:
        images = [self.decode(data) for data in batch.column("bytes").to_pylist()]
        pixels = load_processor(self.model)(images=images, return_tensors="np")["pixel_values"]
        return (
            batch.drop_columns(["bytes"])
            .append_column("width", pa.array([i.width for i in images], pa.int32()))
            .append_column("height", pa.array([i.height for i in images], pa.int32()))
            .append_column("pixel_values", fixed_size_list(pixels.reshape(len(images), -1).astype(np.float32)))
        )

    def decode(self, data: bytes):
        from PIL import Image, ImageOps, UnidentifiedImageError

        if not data:
            raise CorruptImage("empty file (0 bytes)")
        # Our max_pixels is the limit, checked from the header before any pixel is decoded.
        Image.MAX_IMAGE_PIXELS = None
        try:
            image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError as exc:
            raise CorruptImage("not an image PIL can identify") from exc
        width, height = image.size
        if width * height > self.max_pixels:
            raise ImageTooLarge(
                f"image declares {width:,} x {height:,} pixels, more than max_pixels={self.max_pixels:,}"
            )
        try:
            image.load()
            image = ImageOps.exif_transpose(image)
        except (OSError, SyntaxError, ValueError) as exc:
            raise CorruptImage(f"cannot decode {image.format or 'image'}: {exc}") from exc
        return to_rgb(image)


def to_rgb(image):
    """Any PIL mode as 8-bit RGB; transparency is composited onto white."""
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / top * 255.0, 0, 255).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _blank():
    from PIL import Image

    return Image.new("RGB", (8, 8))


class EmbedImages(TorchModel):
    """Image embeddings from a transformers vision model (a local folder), L2-normalised.

    Uses ``get_image_features`` where the model has it (CLIP-style), else the pooled
    output, else the mean of the last hidden state.
    """

    needs = ("pixel_values",)
    drops = ("pixel_values",)
    gpu_batch_size = 256  # 256 images of 3x224x224 float32 are 150 MB per Ray batch

    def __init__(self, model: str, shape: tuple[int, ...], precision: str = "auto", normalize: bool = True):
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model)
        vision = getattr(config, "vision_config", None) or config
        dimensions = getattr(config, "projection_dim", None) or vision.hidden_size
        self.model_path = model
        self.shapes = {"pixel_values": tuple(shape)}
        self.precision = check_precision(precision)
        self.normalize = normalize
        self.adds = {"embedding": pa.list_(pa.float32(), int(dimensions)), "model": pa.string()}

    def state_paths(self) -> list[str]:
        return [self.model_path]

    def load(self):
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        return AutoModel.from_pretrained(self.model_path)

    def forward(self, model, pixel_values):
        import torch

        if hasattr(model, "get_image_features"):
            features = model.get_image_features(pixel_values=pixel_values)
            features = getattr(features, "pooler_output", features)
        else:
            output = model(pixel_values=pixel_values)
            pooled = getattr(output, "pooler_output", None)
            features = pooled if pooled is not None else output.last_hidden_state.mean(dim=1)
        features = features.float()
        return torch.nn.functional.normalize(features, p=2, dim=1) if self.normalize else features

    def process(self, batch: pa.Table) -> pa.Table:
        table = super().process(batch)
        return table.append_column("model", pa.array([self.model_path] * batch.num_rows, pa.string()))
