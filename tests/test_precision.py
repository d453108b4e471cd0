"""EmbedText's arithmetic: what precision="auto" picks on which hardware, and that every
choice it can make stays within cosine 0.9999 of fp32 on real text (this README's
paragraphs, chunked as the doc-embeddings job chunks them); padding (to each group's
longest row, or with pad_to_buckets to bucket lengths, which keeps the shapes few) changes
no embedding. In-process, no Ray."""

import os

import numpy as np
import pyarrow as pa
import pytest

from conftest import ROOT
from headrace import StageContext
from stages.models import EmbedText, auto_precision, bucket
from stages.text import ChunkText


@pytest.fixture(scope="module")
def chunks():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        paragraphs = [p.strip() for p in handle.read().split("\n\n") if p.strip()]
    # Single paragraphs (short chunks) and runs of ten (full 256-token chunks): a real length mix.
    texts = paragraphs[:48] + ["\n\n".join(paragraphs[i : i + 10]) for i in range(48, 128, 10)]
    table = ChunkText().process(pa.table({"doc_id": list(range(len(texts))), "text": texts}))
    lengths = [len(ids) for ids in table.column("input_ids").to_pylist()]
    assert min(lengths) < 32 and max(lengths) == 256 and len(lengths) >= 64
    return table.select(["input_ids"])


def embed(batch, precision, stage_class=EmbedText, **settings):
    stage = stage_class(precision=precision).with_(**settings)
    stage.setup(StageContext(device="cpu", threads=1))
    return np.stack(stage.process(batch).column("embedding").to_numpy(zero_copy_only=False))


SHAPES = set()


class Recording(EmbedText):
    def forward(self, model, input_ids, attention_mask):
        SHAPES.add(tuple(input_ids.shape))
        return super().forward(model, input_ids, attention_mask)


@pytest.fixture(scope="module")
def reference(chunks):
    """fp32, as the stage runs it by default: length-grouped, padded to the longest row of each group."""
    return embed(chunks, "fp32")


@pytest.mark.parametrize(
    "device, flags, cuda_bf16, expected",
    [
        ("cpu", {"avx512f", "amx_bf16", "amx_tile", "avx512_bf16"}, None, "bf16"),  # Sapphire Rapids and later
        ("cpu", {"avx512f", "avx512_bf16"}, None, "bf16"),  # Zen 4 / Cooper Lake: AVX-512 BF16, no AMX
        ("cpu", {"avx2", "avx512f"}, None, "fp32"),  # bf16 only emulated: slower than fp32
        ("cpu", set(), None, "fp32"),
        ("cuda", set(), True, "bf16"),  # Ampere and later
        ("cuda", set(), False, "fp16"),  # Volta, Turing
    ],
)
def test_auto_picks_the_native_fast_arithmetic(device, flags, cuda_bf16, expected):
    assert auto_precision(device, frozenset(flags), cuda_bf16) == expected


@pytest.mark.parametrize("precision, rows", [("bf16", None), ("fp16", 24)])
def test_every_precision_auto_can_pick_stays_within_cosine_0_9999_of_fp32(chunks, reference, precision, rows):
    # fp16 is emulated on a CPU (slow): a third of the rows, short and full ones alike.
    picked = np.arange(len(reference)) if rows is None else np.linspace(0, len(reference) - 1, rows).astype(int)
    ours = embed(chunks.take(pa.array(picked)), precision)
    cosine = (ours * reference[picked]).sum(axis=1)  # both L2-normalised
    assert cosine.min() >= 0.9999, f"{precision}: worst cosine {cosine.min():.6f}"


def test_bucket_padding_changes_no_embedding_and_bounds_the_shapes(chunks, reference):
    SHAPES.clear()
    bucketed = embed(chunks, "fp32", Recording, pad_to_buckets=True)
    buckets = {bucket(n) for n in range(1, 257)}
    assert len(buckets) <= 12 and {width for _, width in SHAPES} <= buckets
    assert ((reference * bucketed).sum(axis=1)).min() >= 0.99999
    unpadded = embed(chunks, "fp32", length_grouping=False, max_batch_tokens=1)  # one row per pass: no padding
    assert ((reference * unpadded).sum(axis=1)).min() >= 0.99999
