"""Baselines for benchmarks/doc_embeddings.py: the same work without headrace.

    python benchmarks/baselines.py loop   INPUT OUTPUT   # one process, torch on all cores
    python benchmarks/baselines.py loop   INPUT OUTPUT --bf16   # the same in bf16 autocast
    python benchmarks/baselines.py raydata INPUT OUTPUT  # idiomatic hand-written Ray Data
    python benchmarks/baselines.py daft    INPUT OUTPUT  # Daft's native runner (pip install -e ".[bench]")

Both decode, extract visible text, chunk to 256 tokens and embed with all-MiniLM-L6-v2
exactly as the headrace job does (they call the same helper functions), and write Parquet.
"""

from __future__ import annotations

import glob
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from stages.models import pad
from stages.text import ChunkText, DecodeText, default_model_path, visible_text

EXTENSIONS = (".html", ".htm", ".md", ".txt")
BATCH = 64
BF16 = "--bf16" in sys.argv  # the loop in bf16 autocast, to compare headrace in the same precision


def list_files(root: str) -> list[str]:
    return sorted(p for p in glob.glob(os.path.join(root, "**", "*"), recursive=True) if p.endswith(EXTENSIONS))


def to_text(path: str, data: bytes) -> str | None:
    try:
        text = DecodeText().decode(data)
        return visible_text(text) if path.endswith((".html", ".htm")) else text
    except ValueError:
        return None  # a bad file: skipped here (headrace quarantines it)


def chunk(paths: list[str], texts: list[str]) -> pa.Table:
    table = pa.table({"source": paths, "text": texts})
    return ChunkText(max_tokens=256).process(table)


def load_model(threads: int):
    import torch
    from transformers import AutoModel

    torch.set_num_threads(threads)
    return AutoModel.from_pretrained(str(default_model_path())).eval()


def embed(model, input_ids: pa.ChunkedArray) -> np.ndarray:
    import torch

    ids, mask = pad(input_ids)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=BF16):
        attention = torch.from_numpy(mask)
        hidden = model(input_ids=torch.from_numpy(ids), attention_mask=attention).last_hidden_state.float()
        weights = attention.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()


def single_process(root: str, output: str) -> int:
    model = load_model(os.cpu_count() or 1)
    paths, texts = [], []
    for path in list_files(root):
        with open(path, "rb") as handle:
            text = to_text(path, handle.read())
        if text is not None:
            paths.append(path)
            texts.append(text)
    chunks = chunk(paths, texts)
    embeddings = [embed(model, chunks.column("input_ids").slice(i, BATCH)) for i in range(0, chunks.num_rows, BATCH)]
    matrix = np.concatenate(embeddings)
    flat = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])
    os.makedirs(output, exist_ok=True)
    pq.write_table(chunks.drop_columns(["input_ids"]).append_column("embedding", flat), os.path.join(output, "part-0.parquet"))
    return chunks.num_rows


def hand_written_ray_data(root: str, output: str) -> int:
    import ray

    ray.init(include_dashboard=False)

    def preprocess(batch: dict) -> dict:
        paths, texts = [], []
        for path, data in zip(batch["path"], batch["bytes"]):
            text = to_text(path, data)
            if text is not None:
                paths.append(path)
                texts.append(text)
        if not paths:
            return {"source": [], "text": [], "input_ids": []}
        table = chunk(paths, texts)
        return {
            "source": table.column("source").to_numpy(zero_copy_only=False),
            "text": table.column("text").to_numpy(zero_copy_only=False),
            "input_ids": table.column("input_ids").to_numpy(zero_copy_only=False),
        }

    class Embedder:
        def __init__(self):
            self.model = load_model(os.cpu_count() or 1)

        def __call__(self, batch: dict) -> dict:
            ids = pa.chunked_array([pa.array(list(batch["input_ids"]), pa.list_(pa.int32()))])
            batch["embedding"] = embed(self.model, ids)
            del batch["input_ids"]
            return batch

    dataset = (
        ray.data.read_binary_files(list_files(root), include_paths=True)
        .map_batches(preprocess, batch_size=16)
        .map_batches(Embedder, batch_size=BATCH, compute=ray.data.ActorPoolStrategy(min_size=1, max_size=2))
    )
    dataset.write_parquet(output)
    return pq.ParquetDataset(output).read(columns=["source"]).num_rows


def daft_native(root: str, output: str) -> int:
    """Daft, as its documentation writes batch inference: a row function decodes and chunks
    each file (the same helpers), the list of chunks is exploded to rows, and a class UDF
    holds the model, one instance per core in its own process with one torch thread (the
    layout headrace uses on CPU), over batches of the same size."""
    import daft
    import transformers  # noqa: F401 - once, here: instances started in threads would race its lazy import
    from daft import DataType, col
    from transformers import AutoModel  # noqa: F401

    cores = os.cpu_count() or 1
    chunk_type = DataType.list(DataType.struct({"text": DataType.string(), "input_ids": DataType.list(DataType.int32())}))

    @daft.func(return_dtype=chunk_type)
    def chunks_of(path: str):
        with open(path, "rb") as handle:
            text = to_text(path, handle.read())
        if text is None:
            return []
        table = chunk([path], [text])
        return [{"text": t, "input_ids": ids} for t, ids in
                zip(table.column("text").to_pylist(), table.column("input_ids").to_pylist())]

    @daft.cls(max_concurrency=cores, use_process=True)
    class Embedder:
        def __init__(self):
            self.model = load_model(1)

        @daft.method.batch(return_dtype=DataType.embedding(DataType.float32(), 384), batch_size=BATCH)
        def __call__(self, input_ids):
            matrix = embed(self.model, pa.chunked_array([input_ids.to_arrow()]))
            return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])

    daft.set_runner_native()
    df = daft.from_pydict({"source": list_files(root)})
    df = df.with_column("chunk", chunks_of(col("source"))).explode("chunk")
    df = df.where(col("chunk").not_null())
    df = df.select(col("source"), col("chunk").get("text").alias("text"),
                   col("chunk").get("input_ids").alias("input_ids"))
    df = df.with_column("embedding", Embedder()(col("input_ids"))).exclude("input_ids")
    df.write_parquet(output)
    rows = pq.ParquetDataset(output).read(columns=["source"]).num_rows
    # Daft 0.7.26's native runner can abort in interpreter finalisation (PyGILState_Release):
    # report and leave before it.
    print(f"rows={rows}", flush=True)
    os._exit(0)


if __name__ == "__main__":
    mode, root, output = sys.argv[1:4]
    rows = {"loop": single_process, "raydata": hand_written_ray_data, "daft": daft_native}[mode](root, output)
    print(f"rows={rows}")
