# Two commands on a fresh machine:  `make demo`  and  `make test`.
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
DEMO   ?= demo
DEMO_ARGS ?=

.PHONY: install demo test docs lint bench clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

install: $(BIN)/.installed

## generate a demo scene, fit a model on it, segment it, print where the outputs are
demo: install
	$(BIN)/stego demo $(DEMO) $(DEMO_ARGS)

## the whole test suite (what CI runs); never downloads weights or data
test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n 2

$(BIN)/.docs-installed: $(BIN)/.installed pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,docs]'
	touch $@

## the documentation site in site/ (open site/index.html, works offline); warnings are errors.
## The reference pages are generated from the code (scripts/docs_reference.py, a MkDocs hook)
docs: $(BIN)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict --quiet

lint: install
	$(BIN)/ruff check pipeline flows tests benchmarks

bench: install
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf $(DEMO) .pytest_cache site
