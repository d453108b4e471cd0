"""Batch text generation over the rows of table files (Parquet, JSON Lines, CSV).

Each row's prompt is ``prompt_template`` with its fields filled from the row's columns
(``"Summarise: {text}"``); a causal LM from a local folder continues it.

    headrace submit pipelines/llm_generate.py --conf input=shards/ --conf output=out/gen \\
        --conf model=/models/my-lm --conf prompt_template='Summarise: {text}' --conf max_new_tokens=64
"""

from __future__ import annotations

import os
import string

import pyarrow as pa

from headrace import ConfigError, Pipeline, Stage, output_sink
from headrace.tables import Tables
from schemas.llm_generate import llm_generate_schema
from stages.generate import Generate, TokenizePrompts, check_generation_fits
from stages.tables import ReadTable


class RenderPrompt(Stage):
    """The template's fields from the row's columns -> ``prompt``."""

    adds = {"prompt": pa.string()}

    def __init__(self, template: str):
        self.template = template
        self.fields = template_fields(template)
        self.needs = self.fields
        self.drops = tuple(f for f in self.fields if f != "prompt")

    def process(self, batch: pa.Table) -> pa.Table:
        rows = zip(*(batch.column(f).to_pylist() for f in self.fields)) if self.fields else [()] * batch.num_rows
        prompts = [self.template.format(**dict(zip(self.fields, values))) for values in rows]
        table = batch.drop_columns(list(self.drops))
        if "prompt" in table.column_names:
            table = table.drop_columns(["prompt"])
        return table.append_column("prompt", pa.array(prompts, pa.string()))


def template_fields(template: str) -> tuple[str, ...]:
    """The column names a prompt template fills, checked before any work starts: a field
    must name a column (``{text}``, with any conversion and format spec a string takes);
    ``{}``, ``{0}``, ``{text.attr}`` and ``{text[0]}`` would fail on every row at run time."""
    def refuse(why: str):
        raise ConfigError(f"prompt_template {template!r}: {why}")

    try:
        parsed = [(field, spec) for _, field, spec, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as exc:  # "expected '}' before end of string", "Single '}' encountered ..."
        refuse(f"{exc} (write {{{{ and }}}} for literal braces)")
    for field, spec in parsed:
        if "{" in (spec or ""):
            refuse(f"{{{field}:{spec}}}: a field inside a format spec is not supported")
        if field == "" or field.isdigit():
            refuse(f"{{{field}}} is positional: name a column, e.g. {{text}}")
        if "." in field or "[" in field:
            refuse(f"{{{field}}} is not a column name (attributes and indexes are not supported): "
                   f"name a column, e.g. {{text}}")
    fields = tuple(dict.fromkeys(field for field, _ in parsed))
    try:  # every field is read as a string: a spec or conversion a string refuses fails here, not per row
        template.format(**{field: "x" for field in fields})
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        refuse(f"{type(exc).__name__}: {exc}")
    return fields


def pipeline(
    input: str = "data/tables",
    output: str = "output/llm_generate",
    model: str = "models/lm",
    prompt_template: str = "{text}",
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    seed: int = 0,
    id_column: str | None = None,
    stop: str = "",
    precision: str = "fp32",
    gen_batch_size: int = 64,
    gen_gpus: float = 1.0,
    length_grouping: bool = True,
    engine: str = "transformers",
    split_bytes: int = 32 * 2**20,
    rows_per_file: int = 20_000,
    max_quarantine_fraction: float = 0.5,
) -> Pipeline:
    """Settings are the keyword arguments. ``stop``: stop strings separated by '|'.
    Rows: record_id, prompt, generated, prompt_tokens, generated_tokens, finish_reason, model."""
    model = os.path.abspath(model) if "://" not in model else model  # workers may start elsewhere
    render = RenderPrompt(prompt_template)
    check_generation_fits(max_new_tokens, model)
    return Pipeline(
        name="llm_generate",
        source=Tables(input, split_bytes=split_bytes),
        stages=[
            # A template shows a number, a flag or a list as its text: not a value of the wrong type.
            ReadTable({f: pa.string() for f in render.fields}, id_column=id_column, required=render.fields,
                      as_text=render.fields),
            render,
            TokenizePrompts(model, max_new_tokens),
            Generate(model, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                     stop=tuple(s for s in stop.split("|") if s), precision=precision,
                     length_grouping=length_grouping, engine=engine).with_(batch_size=gen_batch_size, gpus=gen_gpus),
        ],
        schema=llm_generate_schema(),
        sink=output_sink(output, rows_per_file=rows_per_file),
        max_quarantine_fraction=max_quarantine_fraction,
        columns=["record_id", "prompt", "generated", "prompt_tokens", "generated_tokens", "finish_reason", "model"],
    )
