"""Settings resolve as defaults < properties file < environment < --conf < flags."""

import datetime as dt

import pytest

from headrace import loader
from headrace.config import default_ds, parse_bytes, parse_storage_options, redacted, resolve
from headrace.errors import ConfigError


@pytest.fixture
def factory():
    return loader.load("pipelines.doc_embeddings")


def test_precedence(factory, tmp_path):
    properties = tmp_path / "job.yaml"
    properties.write_text("input: from-file\nmax_tokens: 128\nheadrace:\n  master: local[1]\n  num_cpus: 3\n")
    env = {"HEADRACE_CONF_MAX_TOKENS": "64", "HEADRACE_MASTER": "local[2]"}
    conf = resolve(
        factory, properties_file=str(properties), conf={"max_tokens": "32"},
        flags={"headrace.master": "local[4]", "headrace.name": None}, environ=env, ds="2026-01-02",
    )
    assert conf.settings["input"] == "from-file"
    assert conf.settings["max_tokens"] == 32
    assert conf.settings["output"] == "output/doc_embeddings"  # default
    assert (conf.engine.master, conf.engine.num_cpus, conf.engine.name) == ("local[4]", 3, None)
    assert conf.sources["max_tokens"] == "--conf" and conf.sources["headrace.num_cpus"].startswith("properties file")


def test_values_are_typed_and_ds_expands(factory):
    conf = resolve(factory, conf={"input": "s3://b/{ds}/*.html", "embed_gpus": "0.5", "model": "none"}, environ={}, ds="2026-03-04")
    assert conf.settings["input"] == "s3://b/2026-03-04/*.html"
    assert conf.settings["embed_gpus"] == 0.5 and conf.settings["model"] is None
    with pytest.raises(ConfigError, match="expected bool"):
        resolve(factory, conf={"headrace.require_gpu": "maybe"}, environ={})


def test_unknown_keys_name_what_is_known(factory, tmp_path):
    with pytest.raises(ConfigError, match=r"unknown conf key 'batch' \(from --conf\); pipeline doc_embeddings takes input, output"):
        resolve(factory, conf={"batch": "1"}, environ={})
    properties = tmp_path / "job.yaml"
    properties.write_text("headrace:\n  masterr: local\n")
    with pytest.raises(ConfigError, match=r"unknown conf key 'headrace.masterr' \(from properties file"):
        resolve(factory, properties_file=str(properties), environ={})


def test_a_setting_given_twice_in_a_properties_file_is_an_error_not_the_last_one(factory, tmp_path):
    """PyYAML keeps the last of two equal keys in silence: a forgotten `output: /tmp/test`
    below `output: s3://prod/...` sent the run to the test folder; a setting given as a dotted
    key and in a nested mapping was one of the two, chosen in silence."""
    properties = tmp_path / "job.yaml"
    properties.write_text("input: in\noutput: s3://prod/embeddings\nmax_tokens: 64\noutput: /tmp/test\n")
    with pytest.raises(ConfigError, match=r"job.yaml' is not valid YAML: key 'output' is given twice \(lines 2 and 4\)"):
        resolve(factory, properties_file=str(properties), environ={})
    properties.write_text("headrace.num_cpus: 1\nheadrace:\n  num_cpus: 2\n")
    with pytest.raises(ConfigError, match=r"'headrace.num_cpus' is given twice"):
        resolve(factory, properties_file=str(properties), environ={})
    # A merge key's mapping is overridden by the keys after it, as YAML means it.
    properties.write_text("defaults: &defaults\n  max_tokens: 64\nheadrace:\n  <<: {num_cpus: 1}\n  num_cpus: 2\n")
    with pytest.raises(ConfigError, match=r"unknown conf key 'defaults.max_tokens'"):
        resolve(factory, properties_file=str(properties), environ={})
    properties.write_text("headrace:\n  <<: {num_cpus: 1, master: 'local[1]'}\n  num_cpus: 2\n")
    conf = resolve(factory, properties_file=str(properties), environ={})
    assert (conf.engine.num_cpus, conf.engine.master) == (2, "local[1]")


def test_storage_options_as_a_yaml_mapping_in_a_properties_file(factory, tmp_path):
    """The natural YAML form, a mapping under headrace.storage_options, is its value (it was
    taken for keys `headrace.storage_options.s3.endpoint_url` and refused as unknown)."""
    properties = tmp_path / "job.yaml"
    properties.write_text("headrace:\n  storage_options:\n    s3:\n      endpoint_url: http://minio:9000\n"
                          "      anon: true\n    gs:\n      project: p\n")
    conf = resolve(factory, properties_file=str(properties), environ={})
    expected = {"s3": {"endpoint_url": "http://minio:9000", "anon": True}, "gs": {"project": "p"}}
    assert parse_storage_options(conf.engine.storage_options) == expected
    as_json = resolve(factory, conf={"headrace.storage_options": '{"s3": {"endpoint_url": "http://minio:9000", '
                                     '"anon": true}, "gs": {"project": "p"}}'}, environ={})
    assert parse_storage_options(as_json.engine.storage_options) == expected
    assert redacted(conf.engine.storage_options) == {"s3": {"endpoint_url": "***", "anon": "***"}, "gs": {"project": "***"}}
    properties.write_text("headrace:\n  storage_options:\n    s3: http://minio:9000\n")
    with pytest.raises(ConfigError, match="must map each protocol to its options"):
        resolve(factory, properties_file=str(properties), environ={})
    properties.write_text("input:\n  - a\n  - b\n")  # its Python repr, "['a', 'b']", was the input
    with pytest.raises(ConfigError, match=r"conf input \(from properties file .*\) is a list; it takes one text value"):
        resolve(factory, properties_file=str(properties), environ={})


def test_default_ds_is_yesterday_utc():
    assert default_ds(dt.date(2026, 3, 1)) == "2026-02-28"


def test_object_store_memory_takes_sizes_and_refuses_nonsense(factory):
    assert parse_bytes("2GiB") == 2 * 2**30 and parse_bytes("512MB") == 512 * 10**6
    assert parse_bytes(1_000_000_000) == 10**9 and parse_bytes("1.5g") == 1_500_000_000
    conf = resolve(factory, conf={"headrace.object_store_memory": "1GiB"}, environ={})
    assert conf.engine.object_store_memory == "1GiB"
    with pytest.raises(ConfigError, match="expected a size such as 2GiB"):
        resolve(factory, conf={"headrace.object_store_memory": "lots"}, environ={})
    with pytest.raises(ConfigError, match="at least 100MiB"):
        resolve(factory, environ={"HEADRACE_OBJECT_STORE_MEMORY": "10MB"})
