"""Embeddings of a text column of table files (Parquet, JSON Lines, CSV, WARC/WET).

Each row of the tables under ``input`` is a record: its ``text_column`` is cut into chunks
of at most 256 model tokens and embedded with all-MiniLM-L6-v2, as doc-embeddings does
for files. Work is split by Parquet row group and by byte range of text files, so a
multi-GB shard is many tasks (headrace.tables).

    headrace submit pipelines/table_embeddings.py --conf input='shards/{ds}/' --conf output=out/tables
"""

from __future__ import annotations

import pyarrow as pa

from headrace import Pipeline, output_sink
from headrace.tables import Tables
from schemas.table_embeddings import table_embeddings_schema
from stages.models import EmbedText, check_chunks_fit
from stages.tables import ReadTable
from stages.text import ChunkText


def pipeline(
    input: str = "data/tables",
    output: str = "output/table_embeddings",
    text_column: str = "text",
    id_column: str | None = None,
    model: str | None = None,
    max_tokens: int = 256,
    max_chunks: int = 10_000,
    split_bytes: int = 32 * 2**20,
    embed_batch_size: int = 64,
    embed_gpu_batch_size: int = 1024,
    embed_gpus: float = 1.0,
    embed_precision: str = "auto",
    embed_length_grouping: bool = True,
    rows_per_file: int = 20_000,
    max_quarantine_fraction: float = 0.5,
    output_format: str = "parquet",
) -> Pipeline:
    """Settings are the keyword arguments (``--conf text_column=body``). Rows: record_id
    (``id_column``'s value, else the file URI plus the row number or line offset),
    source, chunk_index, num_chunks, text, embedding, model. A null or empty text is
    quarantined with its file and position."""
    check_chunks_fit(max_tokens, model)
    return Pipeline(
        name="table_embeddings",
        source=Tables(input, split_bytes=split_bytes),
        stages=[
            ReadTable({text_column: pa.string()}, id_column=id_column, required=(text_column,),
                      rename={text_column: "text"}),
            ChunkText(tokenizer=model, max_tokens=max_tokens, max_chunks=max_chunks),
            EmbedText(model=model, precision=embed_precision).with_(
                batch_size=embed_batch_size, gpu_batch_size=embed_gpu_batch_size, gpus=embed_gpus,
                length_grouping=embed_length_grouping,
            ),
        ],
        schema=table_embeddings_schema(),
        sink=output_sink(output, output_format, rows_per_file=rows_per_file),
        max_quarantine_fraction=max_quarantine_fraction,
        columns=["record_id", "source", "chunk_index", "num_chunks", "text", "embedding", "model"],
    )
