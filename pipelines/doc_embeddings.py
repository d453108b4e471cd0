"""The nightly document-embedding job.

HTML, markdown and text files -> visible text -> chunks of at most 256 model tokens ->
all-MiniLM-L6-v2 embeddings (mean pooling, L2 normalisation) -> Parquet.

    headrace submit pipelines/doc_embeddings.py --conf input='docs/{ds}/**' --conf output=out/emb
"""

from __future__ import annotations

from headrace import Files, Pipeline, output_sink
from schemas.doc_embeddings import doc_embeddings_schema
from stages.files import ReadFiles
from stages.models import EmbedText, check_chunks_fit
from stages.text import ChunkText, DecodeText, HtmlToText

EXTENSIONS = (".html", ".htm", ".md", ".txt")


def pipeline(
    input: str = "data/sample",
    output: str = "output/doc_embeddings",
    model: str | None = None,
    max_tokens: int = 256,
    max_chunks: int = 10_000,
    embed_batch_size: int = 64,
    embed_gpu_batch_size: int = 1024,
    embed_gpus: float = 1.0,
    embed_precision: str = "auto",
    embed_length_grouping: bool = True,
    rows_per_file: int = 20_000,
    max_quarantine_fraction: float = 0.5,
    output_format: str = "parquet",
) -> Pipeline:
    """Settings are the keyword arguments (``--conf input=...``); ``model`` is a local folder."""
    check_chunks_fit(max_tokens, model)
    return Pipeline(
        name="doc_embeddings",
        source=Files(input, extensions=EXTENSIONS, id_column="doc_id"),
        stages=[
            ReadFiles(),
            DecodeText(),
            HtmlToText(),
            ChunkText(tokenizer=model, max_tokens=max_tokens, max_chunks=max_chunks),
            EmbedText(model=model, precision=embed_precision).with_(
                batch_size=embed_batch_size, gpu_batch_size=embed_gpu_batch_size, gpus=embed_gpus,
                length_grouping=embed_length_grouping,
            ),
        ],
        schema=doc_embeddings_schema(),
        sink=output_sink(output, output_format, rows_per_file=rows_per_file),
        max_quarantine_fraction=max_quarantine_fraction,
        columns=["doc_id", "source", "chunk_index", "num_chunks", "text", "embedding", "model"],
    )
