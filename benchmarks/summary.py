"""The suite's runs, summed up: medians per contender, the goals of the issue, a Markdown table
(``suite.md``, copied into the README), a JSON file (``suite.json``) and the plot (``suite.png``).

A run that lost data is never timed as if it were fine: medians are over the runs that left every
object intact, and the table says how many did ("2/3").

    python -m benchmarks.summary [--results benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.contenders import ROOT, SEQUENTIAL, TOOLS_PYTHON
from benchmarks.report import RESULTS

MiB = 1024 * 1024
TITLES = {
    "W1": "W1: 2,000 files of 64 KiB",
    "W2": "W2: one file of 1 GiB",
    "W3": "W3: W1 with 5% of requests failing (503 SlowDown or a reset)",
    "W4": "W4: 100,000 files of 4 KiB",
}


def load(results: Path) -> dict[str, dict[str, Any]]:
    return {p.stem.removeprefix("runs-"): json.loads(p.read_text())
            for p in sorted(results.glob("runs-*.json"))}  # fmt: skip


def _median(rows: list[dict[str, Any]], field: str) -> float | None:
    values = [r[field] for r in rows if r.get(field) is not None]
    return float(statistics.median(values)) if values else None


def medians(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (store, contender, latency), in the order first run, over the intact runs."""
    groups: dict[tuple[str, str, str, Any], list[dict[str, Any]]] = {}
    for run in runs:
        key = (run["workload"], run["store"], run["contender"], run["latency_ms"])
        groups.setdefault(key, []).append(run)
    rows = []
    for (workload, store, contender, latency), group in groups.items():
        good = [r for r in group if r["ok"]]
        row: dict[str, Any] = {
            "workload": workload, "store": store, "contender": contender, "latency_ms": latency,
            "concurrency": group[0]["concurrency"], "runs": len(group), "intact": len(good),
            "files": group[0]["files"], "bytes": group[0]["bytes"],
        }  # fmt: skip
        for field in ("wall_s", "client_cpu_s", "server_cpu_s", "proxy_cpu_s", "peak_rss_mib",
                      "requests"):  # fmt: skip
            row[field] = _median(good, field)
        if row["wall_s"]:
            # one big file: files/s says nothing
            row["files_per_s"] = row["files"] / row["wall_s"] if row["files"] > 1 else None
            row["mib_per_s"] = row["bytes"] / MiB / row["wall_s"]
        rows.append(row)
    return rows


def _find(rows: list[dict[str, Any]], store: str, contender: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["store"] == store and r["contender"] == contender), None)


def _f(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| store | contender | wall (s) | files/s | MiB/s | client CPU (s) | server CPU (s) "
        "| peak RSS (MiB) | requests | intact runs |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['store']} | {r['contender']} | {_f(r['wall_s'], '.2f')} "
            f"| {_f(r.get('files_per_s'), '.0f')} | {_f(r.get('mib_per_s'), '.1f')} "
            f"| {_f(r['client_cpu_s'], '.2f')} | {_f(r['server_cpu_s'], '.2f')} "
            f"| {_f(r['peak_rss_mib'], '.0f')} | {_f(r['requests'], '.0f')} "
            f"| {r['intact']}/{r['runs']} |"
        )
    return lines


def goals(parts: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The issue's goals, each with the measured value and whether it is met."""
    out: list[dict[str, Any]] = []

    def add(goal: str, value: float | None, text: str, met: bool | None) -> None:
        out.append({"goal": goal, "value": value, "measured": text, "met": met})

    w1, w2, w3, w4 = (parts.get(w, []) for w in ("W1", "W2", "W3", "W4"))
    for store in ("s3", "gcs"):
        one = _find(w1, store, SEQUENTIAL) or _find(w1, store, "asyncbackup c=1")  # older runs
        sixty = _find(w1, store, "asyncbackup c=64")
        if one and sixty and one["wall_s"] and sixty["wall_s"]:
            x = one["wall_s"] / sixty["wall_s"]
            goal = f"W1 {store}: c=64 at least 25x faster than the sequential baseline"
            add(goal, x, f"{x:.1f}x", x >= 25)
    ours, peer = _find(w1, "s3", "asyncbackup c=64"), _find(w1, "s3", "s5cmd")
    if ours and peer and ours["wall_s"] and peer["wall_s"]:
        x = peer["wall_s"] / ours["wall_s"]
        add("W1 s3: c=64 at least as fast as s5cmd", x, f"{x:.2f}x s5cmd's speed", x >= 1)
    for store in ("s3", "gcs"):
        faulty, clean = _find(w3, store, "asyncbackup c=64"), _find(w1, store, "asyncbackup c=64")
        if faulty and clean and clean["wall_s"]:
            x = faulty["wall_s"] / clean["wall_s"] if faulty["wall_s"] else None
            whole = faulty["intact"] == faulty["runs"]
            text = f"{_f(x, '.2f')}x W1, {faulty['intact']}/{faulty['runs']} runs intact"
            add(f"W3 {store}: every byte intact, at most 1.15x its W1 time", x, text,
                whole and x is not None and x <= 1.15)  # fmt: skip
    ours, peer = _find(w2, "s3", "asyncbackup c=64"), _find(w2, "s3", "s5cmd")
    if ours and peer and ours.get("mib_per_s") and peer.get("mib_per_s"):
        x = ours["mib_per_s"] / peer["mib_per_s"]
        add("W2 s3: at least 80% of s5cmd's throughput", x, f"{x:.0%}", x >= 0.8)
    ours = next((r for r in w4 if r["contender"].startswith("asyncbackup")), None)
    if ours and ours["peak_rss_mib"]:
        rss = ours["peak_rss_mib"]
        add("W4: peak RSS under 200 MiB", rss, f"{rss:.0f} MiB", rss < 200)
    for r in w4:
        if r["client_cpu_s"]:
            ms = r["client_cpu_s"] / r["files"] * 1000
            add(f"W4 {r['store']}: client CPU per file, {r['contender']}", ms, f"{ms:.2f} ms", None)
    return out


def overhead_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| workload | contender | direct (s) | through the delay line at 0 ms (s) | ratio "
             "| delay line CPU (s) |", "|---|---|---:|---:|---:|---:|"]  # fmt: skip
    for workload, name in dict.fromkeys((r["workload"], r["contender"]) for r in rows):
        pair = [r for r in rows if r["workload"] == workload and r["contender"] == name]
        direct = next((r for r in pair if r["latency_ms"] is None), None)
        line = next((r for r in pair if r["latency_ms"] == 0), None)
        if direct and line and direct["wall_s"] and line["wall_s"]:
            lines.append(f"| {workload} | {name} | {direct['wall_s']:.2f} | {line['wall_s']:.2f} "
                         f"| {line['wall_s'] / direct['wall_s']:.2f}x "
                         f"| {_f(line['proxy_cpu_s'], '.2f')} |")  # fmt: skip
    return lines


def scaling_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| files, one directory | contender | wall (s) | client CPU (s) | server CPU (s) "
             "| server CPU per 1,000 objects (s) |", "|---|---|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        per = r["server_cpu_s"] / r["files"] * 1000 if r["server_cpu_s"] is not None else None
        lines.append(f"| {r['files']:,} | {r['contender']} | {_f(r['wall_s'], '.2f')} "
                     f"| {_f(r['client_cpu_s'], '.2f')} | {_f(r['server_cpu_s'], '.2f')} "
                     f"| {_f(per, '.2f')} |")  # fmt: skip
    return lines


def local_table(rows: list[dict[str, Any]], runs: list[dict[str, Any]]) -> list[str]:
    lines = ["| command | wall (s) | files/s | intact runs |", "|---|---:|---:|---:|"]
    for r in rows:
        cmd = next(x["command"] for x in runs if x["contender"] == r["contender"])
        lines.append(f"| `{cmd}` | {_f(r['wall_s'], '.2f')} | {_f(r.get('files_per_s'), '.0f')} "
                     f"| {r['intact']}/{r['runs']} |")  # fmt: skip
    return lines


def markdown(loaded: dict[str, dict[str, Any]], parts: dict[str, list[dict[str, Any]]],
             found: list[dict[str, Any]]) -> str:  # fmt: skip
    any_part = next(iter(loaded.values()))
    p, m = any_part["params"], any_part["machine"]
    quick = " **Quick run: scaled-down data** (W1/W3 200 files, W2 64 MiB, W4 2,000 files)."
    lines = [
        f"Median of {p['rounds']} rounds (W2: at most 2; W4 and the sequential baseline on W1: "
        "one run), "
        "each contender in "
        f"turn, every request delayed {p['latency_ms']:g} ms by the delay line; {m['nproc']} "
        f"CPUs shared by client, server and delay line (and other users), {m['date']}."
        + (quick if p["quick"] else ""),
        f"Peak RSS is measured from a spawner whose own floor is {p['rss_floor_mib']:.0f} MiB.",
    ]
    for name, title in TITLES.items():
        if name in parts:
            title = title if not p["quick"] else f"{name} (scaled down)"
            lines += ["", f"**{title}**", "", *table(parts[name])]
    if found:
        lines += ["", "**Goals**", "", "| goal | measured | met |", "|---|---|---|"]
        for g in found:
            met = "" if g["met"] is None else ("yes" if g["met"] else "**no**")
            lines.append(f"| {g['goal']} | {g['measured']} | {met} |")
    if "overhead" in parts:
        lines += ["", "**The delay line's own cost** (the same upload straight to the server, "
                  "and through "
                  "the delay line set to 0 ms)", "",
                  *overhead_table(parts["overhead"])]  # fmt: skip
    if "scaling" in parts:
        lines += [
            "",
            "**rclone serve s3: the cost of a key grows with the keys beside it** "
            "(straight to the server, no delay line)",
            "",
            *scaling_table(parts["scaling"]),
        ]
    if "local" in parts:
        r0 = loaded["local"]["runs"][0]
        lines += ["", f"**--inject-latency on a local store** ({r0['files']} files of "
                  f"{r0['bytes'] // r0['files'] // 1024} KiB)", "",
                  *local_table(parts["local"], loaded["local"]["runs"])]  # fmt: skip
    lines += ["", f"Command: `{p['command'].strip()}`"]
    return "\n".join(lines)


def plot(results: Path) -> None:
    """The PNG, drawn by the tools venv's matplotlib (not a dependency of asyncbackup)."""
    if not TOOLS_PYTHON.exists():
        print("no .venv-bench-tools: plot skipped (make bench-tools)", file=sys.stderr)
        return
    subprocess.run([str(TOOLS_PYTHON), "-m", "benchmarks.plot", str(results / "suite.json")],
                   check=True, cwd=ROOT)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.summary", description=__doc__)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    loaded = load(args.results)
    if not loaded:
        sys.exit(f"no runs-*.json in {args.results}")
    parts = {name: medians(doc["runs"]) for name, doc in loaded.items()}
    found = goals(parts)
    text = markdown(loaded, parts, found)
    summary = {"medians": parts, "goals": found,
               "params": {k: d["params"] for k, d in loaded.items()},
               "machine": next(iter(loaded.values()))["machine"]}  # fmt: skip
    (args.results / "suite.json").write_text(json.dumps(summary, indent=1) + "\n")
    (args.results / "suite.md").write_text(text + "\n")
    print(text)
    plot(args.results)


if __name__ == "__main__":
    main()
