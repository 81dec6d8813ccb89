"""Every backup restores at the file system's limits (issue 13, items 1 to 3): names of 255
bytes, paths of 4,095 and 8,000 bytes, the root directory's own mode and mtime, and a target
directory swapped for a link while the restore runs."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from asyncbackup import BackupEngine, LocalStorage, ManifestError, MemoryStorage, Storage
from asyncbackup.manifest import FORMAT_VERSION
from asyncbackup.restore import TEMP_MARK
from tests.conftest import SMALL_CHUNK, RecordingSleep, fast_config

NAME_MAX = 255
PATH_MAX = 4096

# One character of each UTF-8 length: a name is cut by bytes, and 255 is rarely a multiple.
ALPHABETS = {"ascii": "a", "2-byte": "é", "3-byte": "中", "4-byte": "😀"}


def name_of(kind: str, char: str) -> str:
    """A name of exactly 255 bytes: a kind letter, ``char`` repeated, ASCII to fill."""
    fill = (NAME_MAX - 1) // len(char.encode())
    name = kind + char * fill
    return name + "x" * (NAME_MAX - len(name.encode()))


def snapshot_fd(root: Path) -> dict[str, tuple[object, ...]]:
    """What ``conftest.snapshot`` records, read through directory descriptors (``os.fwalk``),
    so that trees deeper than PATH_MAX can be compared."""
    seen: dict[str, tuple[object, ...]] = {}
    top = len(str(root))
    for dirpath, dirnames, filenames, dirfd in os.fwalk(root):
        relative = dirpath[top + 1 :]
        for name in dirnames + filenames:
            path = f"{relative}/{name}" if relative else name
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                seen[path] = ("link", os.readlink(name, dir_fd=dirfd), st.st_mtime_ns)
            elif stat.S_ISDIR(st.st_mode):
                seen[path] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
            else:
                fd = os.open(name, os.O_RDONLY, dir_fd=dirfd)
                with os.fdopen(fd, "rb") as f:
                    content = f.read()
                seen[path] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, content)
    return seen


def no_temporary_names(root: Path) -> bool:
    return not [n for _, dirs, files, _ in os.fwalk(root) for n in dirs + files if TEMP_MARK in n]


async def round_trip(store: Storage, source: Path, target: Path) -> None:
    engine = BackupEngine(store, fast_config(), sleep=RecordingSleep())
    await engine.backup(source, name="b")
    await engine.restore("b", target)


@pytest.mark.parametrize("alphabet", ALPHABETS)
async def test_names_of_255_bytes_restore(tmp_path: Path, alphabet: str) -> None:
    char = ALPHABETS[alphabet]
    source = tmp_path / "source"
    source.mkdir()
    file_name, link_name, dir_name = (name_of(k, char) for k in "fld")
    assert {len(n.encode()) for n in (file_name, link_name, dir_name)} == {NAME_MAX}
    (source / file_name).write_bytes(os.urandom(3 * SMALL_CHUNK + 5))  # several chunks
    (source / dir_name).mkdir()
    (source / dir_name / file_name).write_text("one chunk\n")  # a long name in a long name
    os.symlink(file_name, source / link_name)  # a link whose name and target are 255 bytes
    os.symlink(file_name, source / dir_name / link_name)
    target = tmp_path / "target"

    await round_trip(LocalStorage(tmp_path / "store"), source, target)

    assert snapshot_fd(target) == snapshot_fd(source)
    assert len(snapshot_fd(target)) == 5
    assert no_temporary_names(target)


def make_deep(root: Path, depth_bytes: int, leaf: str = "f") -> str:
    """Directories under ``root`` (made through descriptors, as no path call can reach past
    PATH_MAX) until ``root/<dirs>/<leaf>`` is ``depth_bytes`` long; the leaf's relative path.
    Every level holds a small file too, so every depth is restored."""
    left = depth_bytes - len(str(root)) - 1 - len(leaf)
    parts: list[str] = []
    while left > 0:
        size = min(200, left - 1)  # a name and its '/'
        if 0 < left - size - 1 < 4:  # never leave a remainder too short for a name
            size -= 4
        parts.append(f"{len(parts):03d}".ljust(size, "d"))
        left -= size + 1
    assert left == 0, left
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts:
            os.mkdir(part, dir_fd=fd)
            with os.fdopen(os.open("level.txt", os.O_WRONLY | os.O_CREAT, dir_fd=fd), "w") as f:
                f.write(part)
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        with os.fdopen(os.open(leaf, os.O_WRONLY | os.O_CREAT, dir_fd=fd), "wb") as f:
            f.write(os.urandom(2 * SMALL_CHUNK + 1))
        os.symlink("level.txt", "link", dir_fd=fd)
    finally:
        os.close(fd)
    relative = "/".join([*parts, leaf])
    assert len(str(root)) + 1 + len(relative) == depth_bytes
    return relative


async def test_a_path_of_path_max_minus_one_restores_into_a_target_of_the_same_length(
    tmp_path: Path,
) -> None:
    source, target = tmp_path / "source-x", tmp_path / "target-x"  # the same length
    source.mkdir()
    relative = make_deep(source, PATH_MAX - 1)
    assert len(str(target / relative)) == PATH_MAX - 1
    # The final name is 1 byte, the temporary one 29: a temporary path would pass PATH_MAX.

    await round_trip(LocalStorage(tmp_path / "store"), source, target)

    assert snapshot_fd(target) == snapshot_fd(source)
    assert no_temporary_names(target)


async def test_a_tree_8000_bytes_deep_backs_up_and_restores_identically(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    relative = make_deep(source, 8000)
    target = tmp_path / "target"

    await round_trip(MemoryStorage(), source, target)

    want, got = snapshot_fd(source), snapshot_fd(target)
    assert relative in got and got == want
    assert no_temporary_names(target)


async def test_the_root_directory_keeps_its_mode_and_mtime(tmp_path: Path) -> None:
    source = tmp_path / "pgdata"  # PostgreSQL refuses a data directory that is not 0700
    (source / "base").mkdir(parents=True)
    (source / "PG_VERSION").write_text("16\n")
    os.utime(source / "PG_VERSION", ns=(1_500_000_000_000_000_000,) * 2)
    source.chmod(0o700)
    os.utime(source, ns=(1_600_000_000_123_456_789,) * 2)
    store = MemoryStorage()
    target = tmp_path / "restored"

    await round_trip(store, source, target)

    got, want = os.stat(target), os.stat(source)
    assert stat.S_IMODE(got.st_mode) == 0o700
    assert got.st_mtime_ns == want.st_mtime_ns == 1_600_000_000_123_456_789
    manifest = await BackupEngine(store).manifest("b")
    assert manifest.format_version == FORMAT_VERSION == 3
    assert manifest.root is not None and manifest.root.mode == 0o700
    assert manifest.totals.dirs == 1  # base/; the root is recorded, not counted


async def test_the_root_of_an_older_manifest_is_left_as_it_is(tmp_path: Path) -> None:
    """A MANIFEST before version 3 has no root entry: the target keeps its own mode."""
    source = tmp_path / "source"
    source.mkdir(mode=0o700)
    (source / "f").write_text("f\n")
    store = MemoryStorage()
    await BackupEngine(store, fast_config()).backup(source, name="b")
    key = "backups/b/MANIFEST"
    text = store.objects[key].decode()
    lines = [line for line in text.split("\n") if not line.startswith('{"path":".",')]
    store.objects[key] = (
        "\n".join(lines).replace('"format_version":3', '"format_version":2').encode()
    )
    target = tmp_path / "target"
    target.mkdir(mode=0o750)
    target.chmod(0o750)

    await BackupEngine(store, fast_config()).restore("b", target, overwrite=True)

    assert stat.S_IMODE(os.stat(target).st_mode) == 0o750
    assert (target / "f").read_text() == "f\n"


class SwapOnFirstGet(Storage):
    """A store that, at the restore's first chunk fetch, swaps a directory of the target for a
    link to a directory outside it, as an attacker with write access to the target could."""

    def __init__(self, inner: Storage, swap: Path, outside: Path) -> None:
        self.inner, self.url = inner, inner.url
        self.swap, self.outside = swap, outside
        self.swapped = False

    async def put(
        self, key: str, data: bytes, *, overwrite: bool = True, digest: str | None = None
    ) -> None:
        await self.inner.put(key, data, overwrite=overwrite, digest=digest)

    async def get(self, key: str) -> bytes:
        if key.startswith("chunks/") and not self.swapped and self.swap.is_dir():
            self.swapped = True
            self.swap.rename(self.swap.with_name("moved-away"))
            os.symlink(self.outside, self.swap)
        return await self.inner.get(key)

    async def list_objects(self, prefix: str, token: str | None = None):  # type: ignore[no-untyped-def]
        return await self.inner.list_objects(prefix, token)

    async def delete(self, key: str) -> None:
        await self.inner.delete(key)


async def test_a_target_directory_swapped_for_a_link_mid_restore_is_never_followed(
    tmp_path: Path,
) -> None:
    source = tmp_path / "source"
    (source / "sub" / "deeper").mkdir(parents=True)
    for i in range(20):
        (source / "sub" / f"f{i}").write_bytes(os.urandom(100 + i))
        (source / "sub" / "deeper" / f"g{i}").write_bytes(os.urandom(100 + i))
    (source / "sub").chmod(0o750)
    memory = MemoryStorage()
    await BackupEngine(memory, fast_config()).backup(source, name="b")
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o711)
    outside.chmod(0o711)
    before = os.stat(outside)
    target = tmp_path / "target"
    store = SwapOnFirstGet(memory, target / "sub", outside)

    try:
        await BackupEngine(store, fast_config(concurrency=1)).restore("b", target)
    except ManifestError as exc:  # the directory's mode is set last, by name: refused there
        assert "is a link or a file where the backup has a directory" in str(exc)

    assert store.swapped
    assert os.listdir(outside) == []
    after = os.stat(outside)
    assert (stat.S_IMODE(after.st_mode), after.st_mtime_ns) == (0o711, before.st_mtime_ns)
    # The files went where the restore had opened: the real directory, now moved away.
    moved = target / "moved-away"
    assert sorted(os.listdir(moved / "deeper")) == sorted(f"g{i}" for i in range(20))
