"""Peak RSS of a backup and a restore of one 300 MiB file, through the CLI in a subprocess.

The store is local, slowed by injected latency so that uploads and downloads lag behind reading
and writing, and read-ahead fills all it is allowed (measured: with a budget of 1 GiB instead,
the same backup peaked at 303 MiB, and this test fails). At concurrency 32 with 8 MiB chunks, a
read-ahead counted in chunks (2 x concurrency) could hold 512 MiB; the byte budget, 32 MiB
here, holds it to that plus the interpreter. The bound is the peak of the same command on an
empty directory (interpreter, libraries, loop), plus the budget, plus a stated margin of
64 MiB: the worker threads' stacks and read buffers, the allocator's slack, and one chunk in
hand beyond the budget (a chunk is paid for before it is read, but a chunk already read may
wait for room in the pool).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from tests.test_cli import EXIT_OK
from tests.test_manifest_limits import run_measured

MiB = 1024 * 1024
SIZE = 300 * MiB
BUDGET_MIB = 32
MARGIN_MIB = 64


def generated_file(path: Path, size: int) -> str:
    """``size`` bytes that neither repeat per chunk nor compress; their sha256."""
    block = hashlib.sha256(b"seed").digest() * (MiB // 32)  # 1 MiB
    digest = hashlib.sha256()
    with path.open("wb") as f:
        for i in range(size // MiB):
            piece = i.to_bytes(8, "big") + block[8:]  # every MiB differs: no chunk dedups
            f.write(piece)
            digest.update(piece)
    return digest.hexdigest()


def test_a_300_mib_file_backs_up_and_restores_within_the_budget(tmp_path: Path) -> None:
    source, empty, store = tmp_path / "source", tmp_path / "empty", tmp_path / "store"
    source.mkdir()
    empty.mkdir()
    expected = generated_file(source / "big.bin", SIZE)
    common = ["--concurrency", "32", "--buffer-budget", f"{BUDGET_MIB}M", "-q"]
    slow = ["--inject-latency", "1500"]  # each request 1.5 s: uploads lag far behind reads

    idle, idle_peak = run_measured("backup", empty, tmp_path / "idle", *common)
    assert idle.returncode == EXIT_OK, idle.stderr
    bound = idle_peak + BUDGET_MIB + MARGIN_MIB

    backed_up, peak = run_measured("backup", source, store, "--name", "b", *common, *slow)
    assert backed_up.returncode == EXIT_OK, backed_up.stderr
    assert peak < bound, f"backup peaked at {peak:.0f} MiB, over {bound:.0f} MiB"

    target = tmp_path / "target"
    restored, peak = run_measured("restore", store, "b", target, *common, *slow)
    assert restored.returncode == EXIT_OK, restored.stderr
    assert peak < bound, f"restore peaked at {peak:.0f} MiB, over {bound:.0f} MiB"

    digest = hashlib.sha256()
    with (target / "big.bin").open("rb") as f:
        while block := f.read(MiB):
            digest.update(block)
    assert digest.hexdigest() == expected
