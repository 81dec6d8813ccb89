"""``make run``: back up a generated sample into a local store, restore it, verify it, compare.

Every step is the command line a user would type, printed before it runs. Usage:
``python -m asyncbackup.demo [STORE [SAMPLE_DIR]]`` (``./backup-store``, ``./backup-sample``);
the sample is generated only if SAMPLE_DIR does not exist.
"""

from __future__ import annotations

import filecmp
import os
import random
import shlex
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from asyncbackup.cli import main as cli

STORE = "./backup-store"
SAMPLE = "./backup-sample"


def make_sample(root: Path) -> None:
    """A small tree with what matters: several chunks, duplicates, links, empty things."""
    rnd = random.Random(7)
    (root / "docs" / "empty-dir").mkdir(parents=True)
    (root / "data").mkdir()
    for i in range(200):
        (root / "docs" / f"note-{i:03}.txt").write_text(f"note {i}\n" * rnd.randint(1, 500))
    (root / "data" / "blob.bin").write_bytes(rnd.randbytes(20 * 1024 * 1024))  # 3 chunks
    (root / "data" / "copy-of-note-7.txt").write_bytes(
        (root / "docs" / "note-007.txt").read_bytes()
    )
    (root / "data" / "empty").write_bytes(b"")
    (root / "naïve name with spaces.txt").write_text("unicode\n")
    os.symlink("docs/note-001.txt", root / "latest-note")


def run(*argv: str) -> None:
    print(f"\n$ asyncbackup {shlex.join(argv)}", flush=True)
    code = cli(list(argv))
    if code != 0:
        sys.exit(code)


def same_tree(a: Path, b: Path) -> bool:
    compared = filecmp.dircmp(a, b)
    if compared.left_only or compared.right_only or compared.diff_files or compared.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, compared.common_files, shallow=False)
    return (
        not mismatch and not errors and all(same_tree(a / d, b / d) for d in compared.common_dirs)
    )


def main() -> None:
    store = sys.argv[1] if len(sys.argv) > 1 else STORE
    shown = sys.argv[2] if len(sys.argv) > 2 else SAMPLE
    sample = Path(shown)
    if not sample.exists():
        print(f"generating a sample tree in {shown}")
        make_sample(sample)
    name = "demo-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    run("backup", str(sample), store, "--name", name)
    run("list", store)
    run("verify", store, name, "--deep")
    with tempfile.TemporaryDirectory() as scratch:
        target = Path(scratch) / "restored"
        run("restore", store, name, str(target))
        if not same_tree(sample, target):
            sys.exit(f"\nFAILED: the restored tree differs from {shown}")
    print(f"\nOK: backup {name} restored identical to {shown}; the store is {store}.")
    print("Run `make run` again: the second backup uploads only what changed (nothing).")


if __name__ == "__main__":
    main()
