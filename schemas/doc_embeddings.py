"""The row contract of pipelines/doc_embeddings.py."""

from __future__ import annotations

import pandera.polars as pa
import polars as pl

DIMENSIONS = 384
NORM_TOLERANCE = 1e-3


def _unit_norm(data: pa.PolarsData) -> pl.LazyFrame:
    squares = pl.col(data.key).arr.eval(pl.element() * pl.element()).arr.sum()
    return data.lazyframe.select(((squares.sqrt() - 1.0).abs() <= NORM_TOLERANCE).fill_null(False))


def _chunk_index_below_count(data: pa.PolarsData) -> pl.LazyFrame:
    return data.lazyframe.select(pl.col("chunk_index") < pl.col("num_chunks"))


def doc_embeddings_schema(dimensions: int = DIMENSIONS) -> pa.DataFrameSchema:
    return embeddings_schema("doc_id", "doc_embeddings", dimensions)


def embeddings_schema(id_column: str, name: str, dimensions: int = DIMENSIONS) -> pa.DataFrameSchema:
    """Chunks of a record with their embeddings, keyed by ``id_column``."""
    return pa.DataFrameSchema(
        {
            id_column: pa.Column(pl.Utf8, pa.Check.str_length(min_value=1), nullable=False),
            "source": pa.Column(pl.Utf8, pa.Check.str_length(min_value=1), nullable=False),
            "chunk_index": pa.Column(pl.Int32, pa.Check.ge(0), nullable=False),
            "num_chunks": pa.Column(pl.Int32, pa.Check.ge(1), nullable=False),
            "text": pa.Column(
                pl.Utf8,
                pa.Check.str_matches(r"\S", name="text_not_blank"),
                nullable=False,
            ),
            "embedding": pa.Column(
                pl.Array(pl.Float32, dimensions),
                pa.Check(_unit_norm, name="unit_norm"),
                nullable=False,
            ),
            "model": pa.Column(pl.Utf8, nullable=False),
        },
        checks=[pa.Check(_chunk_index_below_count, name="chunk_index_below_num_chunks")],
        name=name,
        strict=False,
    )


DocEmbeddings = doc_embeddings_schema()
