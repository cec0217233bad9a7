PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WORKDIR ?= runs/arena

.PHONY: test arena venv install install-test clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch==2.13.0 and peft are installed in one pip command (via the test extra) so pip takes
# the CPU torch wheel; installing peft alone would pull a CUDA build.
$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

venv: $(BIN)/python
install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest

arena: $(VENV)/.installed
	$(BIN)/python -m launch.arena --config=configs/arena/quick.py --workdir=$(WORKDIR)

clean:
	rm -rf $(VENV) build *.egg-info
