"""Start-up: what each kind of command imports, seen from a real subprocess (``-X importtime``).

``asyncbackup --help`` loads neither asyncio nor an SDK nor the metrics; a command on a local
store loads no SDK (and, without a terminal, no progress bar); an S3 command loads aiobotocore
and not gcloud-aio. Its time is measured by
``benchmarks/startup.py`` (a benchmark, not a timed assertion).
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import asyncbackup
import asyncbackup.storage
from tests.servers import Server

ROOT = Path(__file__).resolve().parents[1]
SDKS = {"aiobotocore", "botocore", "aiohttp", "gcloud", "boto3", "distributed", "dask"}
HEAVY = {"asyncio", "prometheus_client", "tqdm", "aiofiles", "zstandard.backend_cffi"}


def imports_of(*args: str | Path, env: dict[str, str] | None = None) -> tuple[set[str], str]:
    """The top-level packages ``python -m asyncbackup ARGS`` imported, and its stdout."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "asyncbackup", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    names = re.findall(r"^import time:.*\|\s*(\S+)$", result.stderr, re.MULTILINE)
    assert names, result.stderr[-2000:]
    assert result.returncode == 0, result.stderr[-2000:]
    return {name.split(".")[0] for name in names}, result.stdout


def test_help_loads_no_sdk_no_asyncio_and_no_metrics() -> None:
    loaded, out = imports_of("--help")
    assert "backup" in out and "restore" in out
    assert not loaded & (SDKS | HEAVY), sorted(loaded & (SDKS | HEAVY))
    for command in ("backup", "restore", "prune"):
        loaded, out = imports_of(command, "--help")
        assert "--concurrency" in out
        assert not loaded & (SDKS | HEAVY), (command, sorted(loaded & (SDKS | HEAVY)))


def test_commands_on_a_local_store_load_no_sdk(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "a.txt").write_text("local only\n")
    store = tmp_path / "store"
    loaded, _ = imports_of("backup", source, store, "--name", "b", "-q")
    assert not loaded & SDKS, sorted(loaded & SDKS)
    assert "tqdm" not in loaded  # no terminal, no progress bar to draw
    loaded, out = imports_of("list", store, "--json")
    assert '"name": "b"' in out
    assert not loaded & SDKS, sorted(loaded & SDKS)
    loaded, _ = imports_of("restore", store, "b", tmp_path / "restored", "-q")
    assert (tmp_path / "restored" / "a.txt").read_text() == "local only\n"
    assert not loaded & SDKS, sorted(loaded & SDKS)


def test_an_s3_command_loads_aiobotocore_and_not_gcloud(s3_bucket: str, s3_env: Server) -> None:
    loaded, out = imports_of("list", f"s3://{s3_bucket}/x", "--json", env=dict(os.environ))
    assert out.strip() == "[]"
    assert {"aiobotocore", "botocore", "aiohttp"} <= loaded
    assert "gcloud" not in loaded


@pytest.mark.parametrize("package", [asyncbackup, asyncbackup.storage], ids=lambda p: p.__name__)
def test_every_lazy_export_resolves(package: object) -> None:
    names: list[str] = list(getattr(package, "__all__", []))
    homes: dict[str, str] = getattr(package, "_HOMES")  # noqa: B009 - the table under test
    assert set(homes) <= set(names)
    for name in names:
        value = getattr(package, name)
        assert value is not None
        if name in homes:
            assert value is getattr(importlib.import_module(homes[name]), name)
