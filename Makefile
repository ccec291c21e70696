# Two commands on a fresh machine:  `make demo`  and  `make test`.
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
DEMO   ?= demo
DEMO_ARGS ?=

.PHONY: install demo test lint bench clean

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

lint: install
	$(BIN)/ruff check pipeline flows tests benchmarks

bench: install
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf $(DEMO) .pytest_cache
