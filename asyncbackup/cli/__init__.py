"""The command line: ``asyncbackup backup|restore|list|show|diff|verify|delete|prune|unlock``.

Exit codes: 0 done; 1 the operation failed and nothing was committed (or verify found damage);
2 bad usage or configuration; 3 a backup committed with warnings (files skipped, or stored
while they changed); 130 interrupted (SIGINT or SIGTERM).
"""

from asyncbackup.cli.run import main

__all__ = ["main"]
