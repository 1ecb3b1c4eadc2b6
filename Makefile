# Two commands do everything on a machine with only python3:  make demo  and  make test.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum setup.py | cut -d' ' -f1)

.PHONY: install demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): setup.py | $(BIN)/python
	$(BIN)/python -m pip install --disable-pip-version-check -q -e ".[test]"
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)  ## create the virtualenv if missing and install the package with its test tools

demo: install  ## sample data -> train on CPU -> label with Beam -> query summary
	$(BIN)/alexlabel demo

test: install  ## lint, then the whole suite
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf alexlabel-demo .pytest_cache build *.egg-info
