"""What every benchmark records beside its runs: the machine, the command, the medians; and
where it saves them (JSON for tools, Markdown for the README) under ``benchmarks/results/``."""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def machine() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def command(module: str, argv: Sequence[str]) -> str:
    """The command line that reproduces a result."""
    return shlex.join(["python", "-m", module, *argv])


def median_of(runs: list[dict[str, Any]], field: str, **match: object) -> float:
    """The median of ``field`` over the runs whose keys equal ``match``."""
    chosen = [r[field] for r in runs if all(r[k] == v for k, v in match.items())]
    if not chosen:
        raise ValueError(f"no run matches {match}")
    return float(statistics.median(chosen))


def save(out: Path, stem: str, result: dict[str, Any], table: str) -> None:
    """Write ``stem.json`` (everything) and ``stem.md`` (the table and its command)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{stem}.md").write_text(f"{table}\n\nCommand: `{result['command']}`\n")


def side_by_side(
    runs: list[dict[str, Any]],
    stores: Sequence[str],
    concurrency: Sequence[int],
    extra: Callable[[dict[str, Any], float], dict[str, float]],
) -> dict[str, Any]:
    """Medians of wall and CPU time per (operation, store, concurrency), with the fields
    ``extra(match, wall)`` adds, and each store's speed-up from the lowest concurrency to the
    highest."""
    medians: dict[str, dict[str, float]] = {}
    speedups: dict[str, float] = {}
    for op in ("backup", "restore"):
        for store in stores:
            for c in concurrency:
                match = {"op": op, "store": store, "concurrency": c}
                wall = median_of(runs, "wall_s", **match)
                medians[f"{op} {store} c={c}"] = {
                    "wall_s": wall,
                    "cpu_s": median_of(runs, "cpu_s", **match),
                    **extra(match, wall),
                }
            slow, fast = (
                medians[f"{op} {store} c={c}"]["wall_s"]
                for c in (min(concurrency), max(concurrency))
            )
            speedups[f"{op} {store}"] = slow / fast
    return {"medians": medians, "speedup": speedups}
