"""What every benchmark records beside its runs: the machine and the command; and
where it saves them (JSON for tools, Markdown for the README) under ``benchmarks/results/``."""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
from collections.abc import Sequence
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
