# gpt2cli: `make demo` installs and runs the pipeline on the embedded sample; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A machine without CUDA gets the CPU build of torch (a local wheel here); override with `make install TORCH=torch`.
TORCH ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo torch==2.13.0)
GPT2_HOME ?= data/runs
export GPT2_HOME
# Every stage's settings for a run, in one TOML file (a table per command); the sample's is committed.
RUN_CONFIG ?= data/sample/run.toml
GPT2 := $(BIN)/gpt2 --run-config $(RUN_CONFIG)
PYTEST_WORKERS ?= 2

.PHONY: install test lint format demo refresh scrape-reddit dedupe train-bpe tokenize pretrain eval sample sample-data clean

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

# The pipeline: one target per stage, prerequisites upstream. Each stage reuses its artifact when its inputs
# and settings are unchanged, so a second `make demo` recomputes nothing and a changed table in the run config
# recomputes that stage and what depends on it.
scrape-reddit: install
	$(GPT2) scrape-reddit

dedupe: scrape-reddit
	$(GPT2) dedupe

train-bpe: dedupe
	$(GPT2) train-bpe

tokenize: train-bpe
	$(GPT2) tokenize

pretrain: tokenize
	$(GPT2) pretrain

# the held-out split of our corpus, plus every paper task whose data is found ($$GPT2_EVAL_DATA or ../shared/data)
eval: pretrain
	$(GPT2) eval zero-shot

sample: pretrain
	$(GPT2) sample

# One summary: artifact versions and lineage, the validation-loss curve, loss vs unigram entropy, the eval
# table beside the paper's, three samples.
demo: eval
	$(GPT2) report

# The hourly cron job: new links scraped, deduplicated incrementally, re-tokenized; exit 75 if one is running.
# REFRESH_KEEP=N: then delete all but the newest N versions of each kind (`gpt2 artifacts gc`).
refresh: install
	$(GPT2) refresh $(if $(REFRESH_KEEP),--keep $(REFRESH_KEEP))

# Rebuild the embedded Reddit sample (dumps + WARC) from data/sample/articles and Python's docstrings.
sample-data: install
	$(BIN)/python data/sample/build_reddit_sample.py

clean:
	rm -rf $(GPT2_HOME) .pytest_cache .ruff_cache .hypothesis benchmarks/out
