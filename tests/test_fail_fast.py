"""A refused connection at a job's first request is a wrong address: said at once, not retried;
a refusal once the store has answered is retried as before."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from asyncbackup import Metrics, PermanentStorageError, RetryPolicy, TransientStorageError
from asyncbackup.retry import Retrier, Transfer
from tests.conftest import RecordingSleep, make_tree
from tests.test_cli import EXIT_FAILED, ROOT


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("scheme", ["s3", "gs"])
def test_a_wrong_endpoint_fails_at_once_with_wrong_address(scheme: str, tmp_path: Path) -> None:
    port = closed_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    where: list[str] = []
    if scheme == "s3":
        where = ["--endpoint-url", f"http://127.0.0.1:{port}"]
    else:
        env["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    source = make_tree(tmp_path / "source")
    command = ["backup", str(source), f"{scheme}://bucket/x", *where]
    result = subprocess.run(
        [sys.executable, "-m", "asyncbackup", *command],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == EXIT_FAILED, result.stderr
    assert "connection was refused at the job's first request: wrong address?" in result.stderr
    assert "retry:" not in result.stderr  # not one retry: a wrong address is not transient
    assert result.stdout == ""


def refused(what: str) -> TransientStorageError:
    try:
        raise ConnectionRefusedError(111, "Connect call failed")
    except ConnectionRefusedError as cause:  # as a store maps it: raise ... from exc
        try:
            raise TransientStorageError(f"{what}: cannot connect") from cause
        except TransientStorageError as mapped:
            return mapped


def calls(*outcomes: bytes | Exception) -> Callable[[], Awaitable[bytes]]:
    """A store call that gives each of ``outcomes`` in turn (an exception is raised)."""
    pending = list(outcomes)

    async def call() -> bytes:
        outcome = pending.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    return call


async def test_a_refusal_at_the_first_request_is_permanent(sleep: RecordingSleep) -> None:
    metrics = Metrics()
    retrier = Retrier(RetryPolicy(), concurrency=2, metrics=metrics, sleep=sleep)
    with pytest.raises(PermanentStorageError, match="wrong address") as caught:
        await retrier.run(Transfer("backup", "list", "chunks/"), calls(refused("list")))
    assert isinstance(caught.value.__cause__, TransientStorageError)
    assert sleep.calls == []
    assert metrics.retries.labels("backup")._value.get() == 0


async def test_a_refusal_after_the_store_answered_is_retried(sleep: RecordingSleep) -> None:
    metrics = Metrics()
    retrier = Retrier(RetryPolicy(), concurrency=2, metrics=metrics, sleep=sleep)
    assert await retrier.run(Transfer("backup", "list", "chunks/"), calls(b"listed")) == b"listed"
    upload = calls(refused("upload"), refused("upload"), b"stored")
    assert await retrier.run(Transfer("backup", "upload", "a"), upload) == b"stored"
    assert len(sleep.calls) == 2
    assert metrics.retries.labels("backup")._value.get() == 2


async def test_other_transient_errors_at_the_first_request_are_retried(
    sleep: RecordingSleep,
) -> None:
    retrier = Retrier(RetryPolicy(), concurrency=2, metrics=Metrics(), sleep=sleep)
    reset = TransientStorageError("connection reset by peer")
    assert await retrier.run(Transfer("backup", "list", "x"), calls(reset, b"ok")) == b"ok"
    assert len(sleep.calls) == 1
