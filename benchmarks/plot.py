"""Throughput against concurrency: asyncbackup at 1, 8 and 64 as lines, the peers (each at 64)
as horizontal reference lines; W1 in files/s and W2 in MiB/s, on S3 and GCS.

Runs under ``.venv-bench-tools`` (where matplotlib lives), from the summary's ``suite.json``:

    .venv-bench-tools/bin/python -m benchmarks.plot benchmarks/results/suite.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: write a file
import matplotlib.pyplot as plt

PANELS = (("W1", "files_per_s", "files/s"), ("W2", "mib_per_s", "MiB/s"))
STORES = (("s3", "S3 (rclone serve s3)"), ("gcs", "GCS (fake-gcs-server)"))
PEER_STYLES = {"s5cmd": "tab:green", "rclone": "tab:orange", "aws s3 cp": "tab:red"}


def draw(summary: dict[str, Any], out: Path) -> None:
    figure, axes = plt.subplots(2, 2, figsize=(11, 8), squeeze=False)
    params = next(iter(summary["params"].values()))
    latency = params["latency_ms"]
    for row, (part, field, unit) in enumerate(PANELS):
        rows = summary["medians"].get(part, [])
        for col, (store, title) in enumerate(STORES):
            ax = axes[row][col]
            ours = sorted(
                (r for r in rows if r["store"] == store and r["contender"].startswith("async")
                 and r.get(field)),
                key=lambda r: r["concurrency"],
            )  # fmt: skip
            if ours:
                xs = [r["concurrency"] for r in ours]
                ys = [r[field] for r in ours]
                ax.plot(xs, ys, "o-", color="tab:blue", linewidth=2, label="asyncbackup")
                for x, y in zip(xs, ys, strict=True):
                    ax.annotate(f"{y:.0f}", (x, y), textcoords="offset points", xytext=(6, -12))
            for r in rows:
                if r["store"] == store and r["contender"] in PEER_STYLES and r.get(field):
                    color = PEER_STYLES[r["contender"]]
                    ax.axhline(r[field], color=color, linestyle="--",
                               label=f"{r['contender']} at 64: {r[field]:.0f}")  # fmt: skip
            ax.set_xscale("log", base=2)
            ax.set_xticks([1, 8, 64], labels=["1", "8", "64"])
            ax.set_ylim(bottom=0)
            ax.set_xlabel("asyncbackup --concurrency")
            ax.set_ylabel(unit)
            ax.set_title(f"{part} on {title}", fontsize=10)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8, loc="best", framealpha=0.9)
    data = "quick run, scaled down" if params["quick"] else "W1: 2,000 x 64 KiB; W2: 1 GiB"
    figure.suptitle(
        f"Upload throughput against concurrency, {latency:g} ms added to every request ({data})"
    )
    figure.tight_layout()
    figure.savefig(out, dpi=100)


def main() -> None:
    source = Path(sys.argv[1])
    draw(json.loads(source.read_text()), source.with_suffix(".png"))
    print(f"wrote {source.with_suffix('.png')}", file=sys.stderr)


if __name__ == "__main__":
    main()
