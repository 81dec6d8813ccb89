"""Which chunks a backup takes as stored, without uploading them: from its parent, or from a
listing of the store; and the packs it stores, as they are confirmed."""

from __future__ import annotations

import logging

from asyncbackup.backup_state import OPERATION, BackupState
from asyncbackup.compression import preferred_refs
from asyncbackup.errors import ManifestError
from asyncbackup.layout import digest_of_ref
from asyncbackup.manifest import PACKED_FORMAT_VERSION
from asyncbackup.packer import packed_elsewhere
from asyncbackup.packs import Pack, PackIndex
from asyncbackup.parent import spot_check
from asyncbackup.progress import phase
from asyncbackup.threads import to_thread

log = logging.getLogger("asyncbackup")


class StoredChunks(BackupState):
    """``BackupJob``'s knowledge of what the store holds (see ``_learn_stored``)."""

    async def _learn_stored(self) -> None:
        """Decide which chunks this backup may take as stored without uploading them: the one
        place that decides it.

        With a parent: the chunks its MANIFEST names, and nothing is listed, so the requests of
        an incremental backup follow the change, not the size of the store. That is safe
        because the parent is a committed MANIFEST, prune removes only chunks that no committed
        MANIFEST names, and never while this job holds its shared lock (taken before the parent
        was read, held until the MANIFEST is written): see ``docs/design.md``.
        A chunk of a changed file that the parent does not name is uploaded: a PUT is
        idempotent, so a chunk already stored by another backup costs one request, no more.

        Without one (a first backup of this host and source, or ``--force``): one listing of
        ``chunks/``, so a first backup into a store that other backups use still dedups
        against everything there. ``docs/design.md`` gives the cost model and why a listing,
        not index objects.

        A parent damaged behind the protocol's back (a chunk deleted by hand) is not trusted
        blindly: a random sample of its chunks is checked first (``spot_check``); if one is
        missing, what is stored is learnt from a listing instead, and an unchanged file whose
        chunks the store lacks is read again (``_unchanged``), as restic does when a blob of
        the parent is not in its index.
        """
        missing: list[str] = []
        if self.parent is not None and self.parent.format_version >= PACKED_FORMAT_VERSION:
            try:
                self.parent.places = await self.repo.load_index(self.parent.name)
            except ManifestError as exc:
                log.warning("the parent's chunks are not trusted, listing the store: %s", exc)
                missing = ["INDEX"]
        if self.parent is not None and not missing:
            phase(self.progress, "checking the parent's chunks")
            missing = await spot_check(self.repo, self.parent)
            if missing:
                log.warning(
                    "%d of %d chunks of the parent %s checked are missing from the store (%s): "
                    "its chunks are not trusted; listing the store, and reading again every "
                    "file whose chunks are missing",
                    len(missing), len(self.parent.sample), self.parent.name, missing[0],
                )  # fmt: skip
        if self.parent is not None and not missing:
            refs: set[str] = self.parent.refs
            self.places = self.parent.places
            log.info("backup: %d chunks named by the parent %s", len(refs), self.parent.name)
        else:
            phase(self.progress, "listing the store")
            refs = await self.repo.stored_refs(on_page=self._listed)
            log.info("backup: %d chunks already in the store", len(refs))
            if self._packs_on:
                self.places = await packed_elsewhere(self.repo)
                refs |= self.places.places.keys()
            self.trusted = refs
        if not self._packs_on and self.places:  # it writes no INDEX: it may name chunk objects only
            refs = refs - self.places.places.keys()
            self.places = PackIndex()
            self.trusted = refs
        # A Python loop over every ref the parent names (100,000 and more): off the loop.
        self.stored = await to_thread(preferred_refs, refs, self.config.compression.codec)
        self.scheduled = set(self.stored)

    @property
    def _packs_on(self) -> bool:
        """Whether this job packs (and so may name packed chunks); with packs off
        (``--pack-threshold 0``) it stores and names chunk objects only, as before packs."""
        return self.packs and self.config.pack_threshold > 0

    def _pack_stored(self, pack: Pack) -> None:
        """A pack's upload is confirmed: each of its chunks is stored, at its place."""
        self.places.add_pack(pack.pack_id, len(pack.data), pack.chunks)
        for chunk in pack.chunks:
            self.stored[digest_of_ref(chunk.ref)] = chunk.ref
        self.uploaded += len(pack.chunks)
        self.bytes_uploaded += len(pack.data)
        self.metrics.chunks.labels(OPERATION, "transferred").inc(len(pack.chunks))
        self.metrics.bytes.labels(OPERATION, "transferred").inc(len(pack.data))

    def _listed(self, chunks: int) -> None:
        phase(self.progress, "listing the store", f"{chunks} chunks")
