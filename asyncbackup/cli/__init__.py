# PYTHON_ARGCOMPLETE_OK  (argcomplete: this entry point completes; see docs/commands.md)
"""The command line: ``asyncbackup backup|restore|list|show|diff|verify|delete|prune|unlock``.

Exit codes: 0 done; 1 the operation failed and nothing was committed (or verify found damage);
2 bad usage or configuration; 3 a backup committed with warnings (files skipped, or stored
while they changed); 130 interrupted (SIGINT or SIGTERM).
"""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code.

    The arguments are parsed before the engine is imported: ``--help`` and a usage error load
    neither asyncio nor the SDKs nor the metrics (docs/benchmarks.md, start-up).
    """
    from asyncbackup.cli.arguments import parse_args

    args = parse_args(argv)
    from asyncbackup.cli.run import run_command

    return run_command(args)


__all__ = ["main"]
