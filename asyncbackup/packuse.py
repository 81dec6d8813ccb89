"""Which packs the kept backups use, and what prune does with each: the plan of ``repack.py``.

``LivePacks`` folds the kept backups' INDEXes one at a time into each pack's live places;
``plan_packs`` lists ``packs/`` once and sorts every pack into in use, unused (to delete once
older than the grace period), partly used past ``--max-unused`` (to repack, worst first,
within ``--max-repack-size``), and small (merged once there are ``SMALL_PACKS`` of them). Reads
only: a dry run runs it too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial

from asyncbackup.defaults import DEFAULT_MAX_UNUSED as _DEFAULT_MAX_UNUSED
from asyncbackup.errors import ConfigError, IntegrityError
from asyncbackup.layout import PACKS, pack_id_of_key, pack_key
from asyncbackup.packs import PackIndex
from asyncbackup.pool import TaskPool
from asyncbackup.repository import Repository
from asyncbackup.storage.base import ObjectInfo

log = logging.getLogger("asyncbackup")
OPERATION = "prune"

DEFAULT_MAX_UNUSED = _DEFAULT_MAX_UNUSED
"""A pack is repacked once more than this share of its bytes is used by no kept backup. restic's
``--max-unused`` defaults to 5% of the *whole repository* and repacks the worst packs until the
total falls under it; ours bounds *each* pack. Unused bytes accumulate in a pack from 0 up to the
threshold before it is repacked, so a repository pruned regularly wastes about half the threshold
on average: 10% per pack is about restic's 5% overall, with each live byte copied half as often
as a 5% per-pack rule would copy it (each copy costs a read and a write of it)."""

DEFAULT_PACK_SIZE = 16 * 2**20
"""Repacked chunks go into new packs of about this size (the packs' own default size)."""

SMALL_PACKS = 10
"""Fully used packs under half the pack size are merged into full ones once there are this many
(restic waits for 10 small packs too). Each backup's last pack is partial, and an incremental
backup of a small change writes one small pack: without merging, a restore of a year of daily
backups would read from hundreds of small packs. Waiting for 10 keeps one small pack from being
rewritten at every prune."""


@dataclass(frozen=True)
class RepackPolicy:
    """How prune treats partly used packs.

    ``max_unused``: the share (0 to 1) of a pack's bytes that may be unused before it is
    repacked; None never repacks (packs with no live chunk are still deleted).
    ``max_repack_bytes``: at most this many live bytes are copied by one prune (None: no cap);
    the worst packs go first. ``pack_size``: the size of the new packs (None: the engine's).

    Raises:
        ConfigError: a value is out of range.
    """

    max_unused: float | None = DEFAULT_MAX_UNUSED
    max_repack_bytes: int | None = None
    pack_size: int | None = None

    def __post_init__(self) -> None:
        if self.max_unused is not None and not 0 <= self.max_unused < 1:
            raise ConfigError(
                f"--max-unused must be a share from 0% to 99%, or 'unlimited', "
                f"not {self.max_unused:.0%}"
            )
        if self.max_repack_bytes is not None and self.max_repack_bytes < 0:
            raise ConfigError(f"--max-repack-size must not be negative: {self.max_repack_bytes}")
        if self.pack_size is not None and self.pack_size < 1:
            raise ConfigError(f"the pack size must be positive, not {self.pack_size}")


@dataclass
class PackUse:
    """What the kept backups use of one pack: its size as their INDEXes give it, and each used
    place by offset (ref, stored length)."""

    size: int
    live: dict[int, tuple[str, int]] = field(default_factory=dict)

    @property
    def live_bytes(self) -> int:
        return sum(length for _, length in self.live.values())


class LivePacks:
    """The packs the kept backups name, folded from their INDEXes one at a time."""

    def __init__(self) -> None:
        self.uses: dict[str, PackUse] = {}
        self.named_by: dict[str, set[str]] = {}  # pack -> the kept backups whose INDEX names it
        self.size_conflicts: set[str] = set()  # packs two INDEXes give different sizes
        self.max_chunk_size = 0  # the largest chunk size of a kept backup: the decoding bound

    def fold(self, backup: str, index: PackIndex, *, chunk_size: int) -> None:
        """Add what ``backup``'s INDEX uses. Blocking (a loop over every entry): run it in a
        worker thread."""
        self.max_chunk_size = max(self.max_chunk_size, chunk_size)
        for ref, place in index.places.items():
            use = self.uses.get(place.pack)
            if use is None:
                use = self.uses[place.pack] = PackUse(index.pack_sizes[place.pack])
                self.named_by[place.pack] = set()
            elif use.size != index.pack_sizes[place.pack]:
                self.size_conflicts.add(place.pack)
            use.live.setdefault(place.offset, (ref, place.length))
            self.named_by[place.pack].add(backup)


@dataclass(frozen=True)
class PackPlan:
    """What prune does with the packs in the store (or, in a dry run, would do)."""

    unused: dict[str, int]  # pack -> size: no kept backup names it, older than the grace period
    repack: dict[str, int]  # pack -> size: partly used past the threshold, or small
    repack_unused: int  # bytes of the packs to repack that no kept backup uses
    repack_live: int  # bytes of live chunks to copy into new packs
    in_use: int  # packs a kept backup names (those to repack included)
    young: int  # unused packs written within the grace period: they stay
    bytes_young: int
    skipped: tuple[str, ...] = ()  # to repack, but past --max-repack-size: kept
    small: int = 0  # of the packs to repack, those merged only for being small

    @property
    def bytes_unused(self) -> int:
        return sum(self.unused.values())


async def plan_packs(
    repo: Repository,
    live: LivePacks,
    *,
    cutoff: float,
    policy: RepackPolicy,
    concurrency: int,
    pinned: frozenset[str] | set[str] = frozenset(),
) -> PackPlan:
    """Decide which packs to delete and which to repack, from one listing of ``packs/`` and the
    trailers of the packs that may be over the threshold. A ``pinned`` pack (one a shard
    record not yet committed names) is neither deleted nor repacked, and its absence is the
    commit's to refuse, not prune's.

    Raises:
        IntegrityError: a pack a kept backup names is not in the store; nothing was deleted.
        BackupFailed: the store failed.
    """
    listed: dict[str, ObjectInfo] = {}
    async for page in repo.object_pages(PACKS):
        for obj in page:
            pack_id = pack_id_of_key(obj.key)
            if pack_id is not None:
                listed[pack_id] = obj
    _refuse_missing(repo, live, listed)
    unused: dict[str, int] = {}
    young = bytes_young = 0
    suspects: list[str] = []
    fine: list[str] = []  # in use, and not wasteful by the upper bound
    for pack_id, obj in listed.items():
        use = live.uses.get(pack_id)
        if pack_id in pinned:
            continue  # a shard record names it: kept as it is until the commit or expiry
        if use is None:
            if obj.modified < cutoff:
                unused[pack_id] = obj.size
            else:
                young += 1
                bytes_young += obj.size
        elif obj.size != use.size or pack_id in live.size_conflicts:
            log.warning(
                "prune: %s is %d bytes, but an INDEX says %d: it is kept as it is; run "
                "'asyncbackup verify --deep' on the backups that use it",
                pack_key(pack_id), obj.size, use.size,
            )  # fmt: skip
        elif policy.max_unused is not None and over(obj.size - use.live_bytes, obj.size, policy):
            suspects.append(pack_id)  # the trailer counts as unused here: look closer
        else:
            fine.append(pack_id)

    unused_of = await _unused_bytes(repo, live, suspects, concurrency=concurrency)
    worst_first = sorted(
        (p for p in suspects if over(unused_of[p], live.uses[p].size, policy)),
        key=lambda p: (-unused_of[p] / live.uses[p].size, p),
    )
    fine += [p for p in suspects if p not in set(worst_first)]
    small = sorted(
        (p for p in fine if 2 * live.uses[p].size < _target(policy)),
        key=lambda p: (live.uses[p].size, p),
    )
    if policy.max_unused is None or len(small) < SMALL_PACKS:
        small = []  # too few to be worth a rewrite; and none repack with "unlimited"
    repack: dict[str, int] = {}
    skipped: list[str] = []
    copied = 0
    for pack_id in worst_first + small:
        use = live.uses[pack_id]
        cap = policy.max_repack_bytes
        if cap is not None and copied + use.live_bytes > cap:
            skipped.append(pack_id)
            continue
        repack[pack_id] = use.size
        copied += use.live_bytes
    return PackPlan(
        unused=unused,
        repack=repack,
        repack_unused=sum(unused_of.get(p, 0) for p in repack),  # a small one: not measured
        repack_live=copied,
        in_use=len(live.uses.keys() | (set(pinned) & listed.keys())),
        young=young,
        bytes_young=bytes_young,
        skipped=tuple(skipped),
        small=sum(p in repack for p in small),
    )


def _target(policy: RepackPolicy) -> int:
    return policy.pack_size if policy.pack_size is not None else DEFAULT_PACK_SIZE


def over(unused: int, size: int, policy: RepackPolicy) -> bool:
    """Whether ``unused`` of ``size`` bytes is past the policy's threshold."""
    return policy.max_unused is not None and unused > policy.max_unused * size


def _refuse_missing(repo: Repository, live: LivePacks, listed: dict[str, ObjectInfo]) -> None:
    missing = sorted(set(live.uses) - set(listed))
    if not missing:
        return
    backups = sorted(set().union(*(live.named_by[p] for p in missing)))
    more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
    raise IntegrityError(
        f"prune stopped and deleted no pack: {repo.store.url}/{pack_key(missing[0])}{more} is "
        f"missing, and backups {', '.join(backups[:5])}{' ...' if len(backups) > 5 else ''} "
        "name chunks in it. Run 'asyncbackup verify' to see what cannot be restored, delete "
        "the damaged backups ('asyncbackup delete STORE NAME'), then run prune again"
    )


async def _unused_bytes(
    repo: Repository, live: LivePacks, packs: list[str], *, concurrency: int
) -> dict[str, int]:
    """For each of ``packs``: the bytes of the chunks its trailer lists that no kept backup
    uses. A trailer that cannot be read counts the pack's every byte but the live ones as
    unused, so the pack is repacked, its live chunks checked one by one as they are copied."""
    unused: dict[str, int] = {}

    async def measure(pack_id: str) -> None:
        use = live.uses[pack_id]
        try:
            chunks = await repo.read_pack_trailer(pack_id, use.size)
        except IntegrityError as exc:
            log.warning("prune: %s; its live chunks will be copied to a new pack", exc)
            unused[pack_id] = use.size - use.live_bytes
            return
        unused[pack_id] = sum(c.length for c in chunks if c.offset not in use.live)

    async with TaskPool(OPERATION, limit=concurrency, outcome="nothing was deleted") as pool:
        for pack_id in packs:
            await pool.spawn(pack_key(pack_id), partial(measure, pack_id))
    return unused


__all__ = ["DEFAULT_MAX_UNUSED", "LivePacks", "PackPlan", "PackUse", "RepackPolicy", "plan_packs"]
