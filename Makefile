# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint pytest docs chaos bench bench-quick bench-tools clean

install: $(STAMP)

# One pip command installs the package and every dev and test dependency; the stamp makes a
# second `make install` a no-op until pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

# Back up a generated sample into ./backup-store, restore it, verify it, and compare. Both
# places can be moved: `make run DEMO_STORE=/tmp/store DEMO_SAMPLE=/tmp/sample` (tests/test_make_run.py).
DEMO_STORE ?= ./backup-store
DEMO_SAMPLE ?= ./backup-sample

run: install
	$(BIN)/python -m asyncbackup.demo "$(DEMO_STORE)" "$(DEMO_SAMPLE)"

lint: install
	$(BIN)/ruff check asyncbackup tests benchmarks examples
	$(BIN)/ruff format --check asyncbackup tests benchmarks examples
	$(BIN)/mypy

pytest: install
	$(BIN)/pytest -q

test: lint pytest

# docs/commands.md's reference part, from the parser (tests/test_docs.py fails when it drifts).
docs: install
	$(BIN)/python -m asyncbackup.cli.reference docs/commands.md

# The chaos suite alone (also part of `make test`): faults on the wire through tests/proxy.py in
# front of moto and fake-gcs-server, killed and interrupted jobs, hostile manifests and chunks.
chaos: install
	$(BIN)/pytest -q tests/test_chaos_wire.py tests/test_chaos_process.py tests/test_chaos_hostile.py

# The peer tools (s5cmd, rclone, awscli) and matplotlib live in a venv of their own: awscli pins
# an exact botocore that would break aiobotocore's pin in .venv. `make test` never needs them.
TOOLS_VENV := .venv-bench-tools
TOOLS_STAMP := $(TOOLS_VENV)/.installed

bench-tools: $(TOOLS_STAMP)

$(TOOLS_STAMP): benchmarks/requirements-tools.txt
	test -x $(TOOLS_VENV)/bin/python || $(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r benchmarks/requirements-tools.txt
	touch $(TOOLS_STAMP)

# The whole suite (about 35 minutes), then the memory bound, the cost of each compression codec,
# the accuracy of --bwlimit (about 10 minutes more), and incremental backups beside restic (about
# 25 minutes: python -m benchmarks.incremental); results in benchmarks/results/
bench: install bench-tools
	$(BIN)/python -m benchmarks.suite
	$(BIN)/python -m benchmarks.memory
	$(BIN)/python -m benchmarks.compression
	$(BIN)/python -m benchmarks.bwlimit
	$(BIN)/python -m benchmarks.incremental
	$(BIN)/python -m benchmarks.embedding
	$(BIN)/python -m benchmarks.restore_again
	$(BIN)/python -m benchmarks.loop_stall

# The same suite on scaled-down data, one round (a minute or two); results in benchmarks/results/quick/.
bench-quick: install bench-tools
	$(BIN)/python -m benchmarks.suite --quick
	$(BIN)/python -m benchmarks.incremental --quick
	$(BIN)/python -m benchmarks.loop_stall --entries 20000 --files 2000 --rounds 1 \
		--out benchmarks/results/quick

clean:
	rm -rf $(VENV) $(TOOLS_VENV) backup-store backup-sample .mypy_cache .pytest_cache .ruff_cache
