# gpt2cli: `make demo` installs and runs the pipeline on the embedded sample; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A machine without CUDA gets the CPU build of torch (a local wheel here); override with `make install TORCH=torch`.
TORCH ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo torch==2.13.0)
GPT2_HOME ?= data/runs
export GPT2_HOME
GPT2 := $(BIN)/gpt2
PYTEST_WORKERS ?= 2

# The embedded sample and the demo's settings (small enough for 2 CPU cores).
DUMPS ?= data/sample/reddit/RS_2017-11.zst
REPLAY ?= data/sample/reddit/pages.warc.gz
VOCAB_SIZE ?= 4096
PRETRAIN_CONFIG ?= data/sample/pretrain.toml

.PHONY: install test lint format demo scrape-reddit dedupe train-bpe tokenize pretrain eval sample sample-data clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev,bench]"
	touch $@

test: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/pytest -q -n $(PYTEST_WORKERS)

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: install
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

# One target per stage; each reuses its artifact when inputs and parameters are unchanged.
scrape-reddit: install
	$(GPT2) scrape-reddit $(addprefix --dump ,$(DUMPS)) $(addprefix --replay ,$(REPLAY))

dedupe: scrape-reddit
	$(GPT2) dedupe --raw-docs raw-docs

train-bpe: dedupe
	$(GPT2) train-bpe --corpus corpus --vocab-size $(VOCAB_SIZE)

tokenize: train-bpe
	$(GPT2) tokenize --corpus corpus

pretrain: tokenize
	$(GPT2) pretrain --config $(PRETRAIN_CONFIG)

# the held-out split of our corpus, plus every paper task whose data is found ($$GPT2_EVAL_DATA or ../shared/data)
eval: pretrain
	$(GPT2) eval zero-shot --limit 300

sample: pretrain
	$(GPT2) sample --prompt "The city council" --max-new-tokens 60 --num-samples 2 --seed 1

demo: eval sample
	$(GPT2) artifacts ls
	$(GPT2) artifacts lineage model

# Rebuild the embedded Reddit sample (dumps + WARC) from data/sample/articles and Python's docstrings.
sample-data: install
	$(BIN)/python data/sample/build_reddit_sample.py

clean:
	rm -rf $(GPT2_HOME) .pytest_cache .ruff_cache .hypothesis benchmarks/out
