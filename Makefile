# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch (a looser spec pulls a multi-GB CUDA build); pyproject.toml states the
# real requirement (torch>=2.2, CUDA-capable) for users.
TORCH_CPU := torch==2.13.0

.PHONY: install demo test lint format docs clean

$(BIN)/unetpipe: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_CPU)
	$(BIN)/pip install --quiet -e '.[test,docs]'
	touch $@

install: $(BIN)/unetpipe

SNAKEMAKE := PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --snakefile workflow/Snakefile

demo: install
	$(SNAKEMAKE) --configfile config/demo.yaml --cores 2
	$(SNAKEMAKE) --configfile config/demo.yaml --report results/demo/demo/report.html
	$(BIN)/unetpipe summary results/demo/demo

test: install
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q tests

lint: install
	$(BIN)/ruff check unetpipe tests benchmarks workflow/scripts
	$(BIN)/ruff format --check unetpipe tests benchmarks workflow/scripts
	$(SNAKEMAKE) --configfile config/demo.yaml --lint
	$(BIN)/snakefmt --check workflow

format: install
	$(BIN)/ruff format unetpipe tests benchmarks workflow/scripts
	$(BIN)/ruff check --fix unetpipe tests benchmarks workflow/scripts

docs: install
	$(BIN)/mkdocs build --strict

clean:
	rm -rf results logs .snakemake site
