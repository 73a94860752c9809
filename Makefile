# Two entry points (see README): `make quickstart` runs the embedded default suite, `make test` the tests.
# Both create the virtual environment at .venv/ on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup quickstart test peers clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

quickstart: setup
	$(BIN)/bench run suites/quickstart.toml

test: setup
	$(BIN)/python -m pytest -q -m "not ci_only"

# bench's training step against a bare PyTorch loop, transformers.Trainer and TRL's SFTTrainer (benchmarks/peers.py), 7 rounds
peers: setup
	$(BIN)/python benchmarks/peers.py --rounds 7 --save results/baselines/peers-cpu.json

clean:
	rm -rf $(VENV) .pytest_cache
