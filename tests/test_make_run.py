"""``make run``, the README's first command, run as a user runs it: in the repository, through
make, with the venv ``make test`` built. Its store and sample go to a temporary directory (the
Makefile's DEMO_STORE and DEMO_SAMPLE), so the repository is left as it was."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import assert_same_tree

REPO = Path(__file__).resolve().parents[1]
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
STAMP = ".venv/.installed"


def clean_env() -> dict[str, str]:
    """This environment without what an outer make (``make test``) passes down to its children:
    the inner make must read its own command line only."""
    return {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}


@pytest.fixture
def make() -> str:
    found = shutil.which("make")
    if found is None:
        pytest.skip("needs make (apt-get install make)")
    if not VENV_PYTHON.exists():
        pytest.skip(f"needs the repository's venv {VENV_PYTHON}: run make install")
    # The stamp must be newer than pyproject.toml, or `make run` would reinstall (minutes, and
    # the network): this test runs the demo, not pip.
    fresh = subprocess.run(
        [found, "--question", STAMP], cwd=REPO, env=clean_env(), capture_output=True
    )
    if fresh.returncode != 0:
        pytest.skip(f"{STAMP} is older than pyproject.toml: run make install first")
    return found


def make_run(make: str, store: Path, sample: Path) -> str:
    """`make run` with the store and sample moved; its output (stdout and stderr, in order)."""
    done = subprocess.run(
        [make, "--no-print-directory", "run", f"DEMO_STORE={store}", f"DEMO_SAMPLE={sample}"],
        cwd=REPO,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout
    return done.stdout


def test_make_run_backs_up_restores_and_compares_and_a_second_run_uploads_nothing(
    make: str, tmp_path: Path
) -> None:
    in_repo = {p for p in ("backup-store", "backup-sample") if (REPO / p).exists()}
    store, sample = tmp_path / "the store", tmp_path / "the sample"  # spaces: quoted through

    first = make_run(make, store, sample)
    assert "pip install" not in first  # the stamp made install a no-op
    assert f"generating a sample tree in {sample}" in first
    for step in ("backup", "list", "verify", "restore"):
        assert f"\n$ asyncbackup {step} " in first, step
    said = r"OK: backup (demo-\S+) restored identical to (.+); the store is (.+)\.\n"
    ok = re.search(said, first)
    assert ok is not None, first
    name = ok[1]
    assert (ok[2], ok[3]) == (str(sample), str(store))
    assert re.search(rf"verify \(deep\) of {name}: all \d+ chunks ok, \d+ files ok", first)

    # What the demo promises, checked by a restore of our own from the store it left.
    restored = tmp_path / "restored"
    again = subprocess.run(
        [sys.executable, "-m", "asyncbackup", "restore", str(store), name, str(restored)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr
    assert_same_tree(sample, restored)

    # "Run `make run` again: the second backup uploads only what changed (nothing)."
    second = make_run(make, store, sample)
    assert "generating a sample tree" not in second  # the same sample, backed up again
    assert f"unchanged since {name})" in second
    assert ", 0 chunks uploaded (0.0 MiB)," in second

    assert {p for p in ("backup-store", "backup-sample") if (REPO / p).exists()} == in_repo
