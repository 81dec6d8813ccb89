# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint pytest chaos bench clean

install: $(STAMP)

# One pip command installs the package and every dev and test dependency; the stamp makes a
# second `make install` a no-op until pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

# Back up a generated sample into ./backup-store, restore it, verify it, and compare.
run: install
	$(BIN)/python -m asyncbackup.demo ./backup-store

lint: install
	$(BIN)/ruff check asyncbackup tests benchmarks
	$(BIN)/ruff format --check asyncbackup tests benchmarks
	$(BIN)/mypy

pytest: install
	$(BIN)/pytest -q

test: lint pytest

# The chaos suite alone (also part of `make test`): faults on the wire through tests/proxy.py in
# front of moto and fake-gcs-server, killed and interrupted jobs, hostile manifests and chunks.
chaos: install
	$(BIN)/pytest -q tests/test_chaos_wire.py tests/test_chaos_process.py tests/test_chaos_hostile.py

bench: install
	$(BIN)/python -m benchmarks.latency
	$(BIN)/python -m benchmarks.memory
	$(BIN)/python -m benchmarks.remote
	$(BIN)/python -m benchmarks.bwlimit

clean:
	rm -rf $(VENV) backup-store backup-sample .mypy_cache .pytest_cache .ruff_cache
