"""Defaults the command line shows in ``--help``, in a module that imports nothing.

Each belongs to the module named beside it, which imports it from here: building the parser must
not load that module (the prune machinery, the metrics server, asyncio), so that ``asyncbackup
--help`` stays fast (docs/benchmarks.md, start-up).
"""

from __future__ import annotations

DEFAULT_GRACE = 24 * 3600.0  # prune.py: a chunk younger than this is never removed
DEFAULT_MAX_UNUSED = 0.10  # packuse.py: the unused share of a pack past which prune repacks it
DEFAULT_LOCK_WAIT = 300.0  # locks.py: how long a job waits for a conflicting repository lock
DEFAULT_METRICS_ADDRESS = "127.0.0.1"  # exposition.py: what --metrics-port binds
DEFAULT_PUSH_JOB = "asyncbackup"  # exposition.py: the job label of a Pushgateway push
DEFAULT_STDIN_NAME = "stdin"  # stream.py: the path of a backup read from standard input
