"""The engine's jobs that restore: a whole backup (or the entries patterns select), one file to a
writer, one shard of a restore and its last step."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from asyncbackup import restore_shards
from asyncbackup.cat import Write, find_file, write_file
from asyncbackup.engine_base import EngineBase, on_own_threads
from asyncbackup.errors import BackupFailed, ConfigError, FailedItem, ManifestError
from asyncbackup.layout import check_backup_name
from asyncbackup.patterns import Patterns, select
from asyncbackup.progress import expect
from asyncbackup.restore import RestoreJob, RestoreSummary
from asyncbackup.shards import ShardSpec
from asyncbackup.threads import to_thread


class RestoreMethods(EngineBase):
    """``BackupEngine``'s restore, restore_file and restore_shard."""

    @on_own_threads
    async def restore_file(self, name: str, path: str, write: Write) -> int:
        """Write file ``path`` of backup ``name`` to ``write``, in order, each chunk checked
        against its hash before it is written; the number of bytes written.

        Raises:
            ManifestError: no such backup or file, or the MANIFEST is corrupt or unsafe.
            ConfigError: ``path`` is a directory or a link.
            IntegrityError: a chunk or the whole file does not match its hash.
            BackupFailed: the store failed.
        """
        repo = self._repository("restore")
        manifest = await repo.load_manifest(check_backup_name(name))
        entry = find_file(manifest, path)
        # Chunks fetched ahead of the writes, within the byte budget (at least one).
        ahead = max(
            1, min(self.config.concurrency, self.config.buffer_budget // manifest.chunk_size)
        )
        expect(self.progress, files=1, nbytes=entry.size)

        async def write_and_count(data: bytes) -> None:
            await write(data)
            self.progress.advance(nbytes=len(data))

        job = write_file(repo, manifest, entry, write_and_count, ahead=ahead)
        written = await self._timed("restore", job)
        self.progress.advance(files=1)
        return written

    @on_own_threads
    async def restore(
        self,
        name: str,
        target: str | Path,
        *,
        overwrite: bool = False,
        delete: bool = False,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
    ) -> RestoreSummary:
        """Restore backup ``name`` into directory ``target``; with ``include`` or ``exclude``
        (gitignore patterns), only the entries they select and the directories above them.
        With ``overwrite``, into a non-empty directory: files already there with the backup's
        size and sha256 are kept (not fetched), others replaced, and entries the backup does
        not have are left alone; ``delete`` removes those too (it implies ``overwrite``, and
        cannot be combined with patterns). See docs/restore.md.

        Raises:
            ConfigError: the target is not empty (and ``overwrite`` is False) or is a file; a
                pattern is invalid, or the patterns select nothing; ``delete`` with patterns.
            ManifestError: no such backup, or its MANIFEST is corrupt or unsafe.
            TargetError: the target cannot be written (a full disk, a permission).
            BackupFailed: a chunk was missing or corrupt, or the store failed.
        """
        if delete and (include or exclude):
            raise ConfigError(
                "--delete removes what the backup does not have, and with --include or "
                "--exclude that would be everything left out: use one or the other"
            )
        wanted = Patterns(include, what="--include pattern")
        unwanted = Patterns(exclude, what="--exclude pattern")
        repo = self._repository("restore")
        manifest = await repo.load_manifest(check_backup_name(name))
        if wanted or unwanted:
            manifest = await to_thread(select, manifest, include=wanted, exclude=unwanted)
        job = RestoreJob(repo, self.config, self.metrics, self.progress)
        expect(self.progress, files=manifest.totals.files, nbytes=manifest.totals.bytes)
        run = job.run(manifest, Path(target), overwrite=overwrite, delete=delete)
        return await self._timed("restore", run)

    @on_own_threads
    async def restore_shard(
        self, name: str, target: str | Path, *, shard: ShardSpec | None
    ) -> RestoreSummary:
        """Restore shard ``shard``'s files of backup ``name`` into ``target``, beside the other
        shards (as ``overwrite`` does); with ``shard`` None, the last step once every shard is
        done: leftovers, empty directories, symlinks, directory modes and mtimes, after a
        check that every file is in place (see restore_shards.py).

        Raises:
            ManifestError: no such backup, or its MANIFEST is corrupt or unsafe.
            BackupFailed: a chunk was missing or corrupt, or (the last step) a file is missing
                from the target: a shard did not finish.
        """
        repo = self._repository("restore")
        manifest = await repo.load_manifest(check_backup_name(name))
        job = RestoreJob(repo, self.config, self.metrics, self.progress)
        if shard is not None:
            part = await to_thread(restore_shards.part_of, manifest, shard)
            expect(self.progress, files=part.totals.files, nbytes=part.totals.bytes)
            run = job.run(part, Path(target), overwrite=True, sweep_leftovers=False)
            return replace(await self._timed("restore", run), name=f"{name} (shard {shard})")
        missing = await to_thread(restore_shards.missing_files, manifest, Path(target))
        if missing:
            error = ManifestError(
                f"{len(missing)} files of backup {name} are not in {target} (the first: "
                f"{missing[0]!r}): a shard did not finish; run it again, then this step"
            )
            raise BackupFailed("restore", [FailedItem("", error)], outcome="nothing was changed")
        rest = await to_thread(restore_shards.last_step_of, manifest)
        summary = await self._timed("restore", job.run(rest, Path(target), overwrite=True))
        totals = manifest.totals
        return replace(summary, files=totals.files, bytes=totals.bytes)
