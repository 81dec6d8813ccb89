"""Start-up time: ``asyncbackup --help`` and the imports of each kind of command, interleaved.

    python -m benchmarks.startup [--rounds 15]

Each round runs every contender once, in turn, as a subprocess (wall time and CPU seconds from
``os.wait4``): a bare interpreter (the floor no Python CLI goes under), ``asyncbackup --help``
(the console script and ``python -m``), and the imports a local, an S3 and a GCS command pay
before they do any work. Medians, and each one's excess over the bare interpreter.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.report import RESULTS, command, machine, save
from benchmarks.spawner import run

PYTHON = sys.executable
SCRIPT = str(Path(PYTHON).with_name("asyncbackup"))
LOCAL = "import asyncbackup.cli.run, asyncbackup.storage.local"
CONTENDERS = {
    "python -c pass": [PYTHON, "-c", "pass"],
    "asyncbackup --help": [SCRIPT, "--help"],
    "python -m asyncbackup --help": [PYTHON, "-m", "asyncbackup", "--help"],
    "imports of a local-store command": [PYTHON, "-c", LOCAL],
    "imports of an S3 command": [PYTHON, "-c", f"{LOCAL}, asyncbackup.storage.s3"],
    "imports of a GCS command": [PYTHON, "-c", f"{LOCAL}, asyncbackup.storage.gcs"],
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.startup", description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--before",
        type=Path,
        metavar="DIR",
        help="a checkout of an older asyncbackup: its --help runs too (PYTHONPATH=DIR)",
    )
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    env = dict(os.environ)
    contenders = {name: (cmd, env) for name, cmd in CONTENDERS.items()}
    if args.before is not None:
        # Without site (-S), so the editable install's finder cannot pick this tree for both.
        packages = next(p for p in sys.path if p.endswith("site-packages"))
        help_argv = [PYTHON, "-S", "-m", "asyncbackup", "--help"]
        for label, tree in (("this tree", Path.cwd()), ("before", args.before.absolute())):
            tree_env = {**env, "PYTHONPATH": f"{tree}{os.pathsep}{packages}"}
            contenders[f"python -S -m asyncbackup --help, {label}"] = (help_argv, tree_env)
    out = args.out.absolute()
    # Every run starts in an empty directory: ``-m`` puts the working directory first on the
    # path, where this tree would shadow the one a contender names.
    os.chdir(tempfile.mkdtemp(prefix="asyncbackup-startup-"))
    runs: list[dict[str, Any]] = []
    for round_ in range(args.rounds):
        for name, (cmd, cmd_env) in contenders.items():
            row = run(cmd, cmd_env, timeout=60)
            if row["exit_code"] != 0:
                raise SystemExit(f"{name} failed: {row['stderr_tail']}")
            runs.append({"name": name, "round": round_, **row})

    def median(name: str, field: str) -> float:
        return float(statistics.median(r[field] for r in runs if r["name"] == name))

    floor_wall, floor_cpu = (
        median("python -c pass", "wall_s"),
        median("python -c pass", "client_cpu_s"),
    )
    lines = [
        f"| command (median of {args.rounds}, interleaved) | wall s | CPU s | wall over bare "
        "python | CPU over bare python |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in contenders:
        wall, cpu = median(name, "wall_s"), median(name, "client_cpu_s")
        excess = f"{wall - floor_wall:+.3f} | {cpu - floor_cpu:+.3f}"
        lines.append(f"| {name} | {wall:.3f} | {cpu:.3f} | {excess} |")
    table = "\n".join(lines)
    print(table)
    result = {"command": command("benchmarks.startup", argv), "machine": machine(), "runs": runs}
    save(out, "startup", result, table)


if __name__ == "__main__":
    main()
