"""The command line: ``asyncbackup backup|restore|list|show|verify|delete|prune|unlock``.

Exit codes: 0 done; 1 the operation failed and nothing was committed (or verify found damage);
2 bad usage or configuration; 130 interrupted (SIGINT or SIGTERM).
"""

from asyncbackup.cli.run import main

__all__ = ["main"]
