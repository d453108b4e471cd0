"""The row contract of pipelines/table_embeddings.py: doc-embeddings' contract, keyed by
``record_id`` (one row of a table file) instead of ``doc_id``."""

from __future__ import annotations

from schemas.doc_embeddings import DIMENSIONS, embeddings_schema


def table_embeddings_schema(dimensions: int = DIMENSIONS):
    return embeddings_schema("record_id", "table_embeddings", dimensions)


TableEmbeddings = table_embeddings_schema()
