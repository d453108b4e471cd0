"""The row contract of pipelines/image_embeddings.py."""

from __future__ import annotations

import pandera.polars as pa
import polars as pl


def _finite(data: pa.PolarsData) -> pl.LazyFrame:
    return data.lazyframe.select(pl.col(data.key).arr.eval(pl.element().is_finite()).arr.all().fill_null(False))


def image_embeddings_schema(dimensions: int) -> pa.DataFrameSchema:
    return pa.DataFrameSchema(
        {
            "image_id": pa.Column(pl.Utf8, pa.Check.str_length(min_value=1), nullable=False),
            "source": pa.Column(pl.Utf8, pa.Check.str_length(min_value=1), nullable=False),
            "width": pa.Column(pl.Int32, pa.Check.gt(0), nullable=False),
            "height": pa.Column(pl.Int32, pa.Check.gt(0), nullable=False),
            "embedding": pa.Column(pl.Array(pl.Float32, dimensions), pa.Check(_finite, name="finite"), nullable=False),
            "model": pa.Column(pl.Utf8, nullable=False),
        },
        name="image_embeddings",
        strict=False,
    )
