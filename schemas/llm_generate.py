"""The row contract of pipelines/llm_generate.py."""

from __future__ import annotations

import pandera.polars as pa
import polars as pl


def llm_generate_schema() -> pa.DataFrameSchema:
    return pa.DataFrameSchema(
        {
            "record_id": pa.Column(pl.Utf8, pa.Check.str_length(min_value=1), nullable=False),
            "prompt": pa.Column(pl.Utf8, nullable=False),
            "generated": pa.Column(pl.Utf8, nullable=False),
            "prompt_tokens": pa.Column(pl.Int32, pa.Check.ge(1), nullable=False),
            "generated_tokens": pa.Column(pl.Int32, pa.Check.ge(0), nullable=False),
            "finish_reason": pa.Column(pl.Utf8, pa.Check.isin(["stop", "length"]), nullable=False),
            "model": pa.Column(pl.Utf8, pa.Check.str_length(min_value=1), nullable=False),
        },
        name="llm_generate",
        strict=False,
    )


LlmGenerate = llm_generate_schema()
