"""``--inject-latency`` on a local store: what concurrency buys, in one command, with no server.

    asyncbackup backup SRC ./store --inject-latency 25 --concurrency 1     # then 64

Each run backs up into a fresh directory, and is checked: the CLI exits 0, and the store holds
the MANIFEST and one chunk per file whose name is the sha256 of that file's bytes. Packs are off
(``--pack-threshold 0``): with them, these files would be one pack, and concurrency would have
nothing to overlap.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any

from benchmarks.spawner import Spawner
from benchmarks.workloads import Workload, make_tree

CONCURRENCY = (1, 64)


def run(
    spawner: Spawner, root: Path, *, files: int, size: int, latency_ms: float, rounds: int
) -> list[dict[str, Any]]:
    source = root / "source"
    make_tree(source, Workload("local", "local", files, size))
    # one chunk per file (64 KiB is far below a chunk), named by the sha256 of its bytes
    wanted = {hashlib.sha256(p.read_bytes()).hexdigest() for p in source.iterdir()}
    runs: list[dict[str, Any]] = []
    for round_ in range(1, rounds + 1):
        for c in CONCURRENCY:
            store = root / f"store-r{round_}-c{c}"
            argv = [
                sys.executable, "-m", "asyncbackup", "backup", str(source), str(store),
                "--inject-latency", f"{latency_ms:g}", "--concurrency", str(c),
                "--name", "bench", "-q", "--pack-threshold", "0",
            ]  # fmt: skip
            row = spawner.run(argv, dict(os.environ), timeout=1800)
            stored = {p.name for p in (store / "chunks").glob("*")}
            intact = stored == wanted and (store / "backups" / "bench" / "MANIFEST").exists()
            row.update(workload="local", store="local", contender=f"asyncbackup c={c}",
                       concurrency=c, latency_ms=latency_ms, round=round_, files=files,
                       bytes=files * size, intact=intact, ok=intact and row["exit_code"] == 0,
                       command=f"asyncbackup backup SRC ./store --inject-latency {latency_ms:g} "
                       f"--concurrency {c}")  # fmt: skip
            runs.append(row)
            print(f"local round {round_} c={c}: {row['wall_s']:.2f} s, intact={intact}",
                  file=sys.stderr, flush=True)  # fmt: skip
    return runs
