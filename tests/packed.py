"""Packed backups for prune's tests, laid out exactly as a test needs them, and the check that
every chunk every backup names can be read back with its right bytes.

``pack_backup`` turns a backup the engine wrote (chunk objects, format 3) into a packed one: its
chunks go into packs of ``per_pack`` chunks (those an earlier packed backup already placed stay
where that one put them, as an incremental backup's INDEX takes its parent's places), its INDEX
is written, and its MANIFEST rewritten as format 4. The chunk objects stay until
``drop_chunk_objects``: then every chunk lies only in packs.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

from asyncbackup.compression import codec_of_ref, decode
from asyncbackup.layout import (
    BACKUPS,
    CHUNKS,
    digest_of_ref,
    index_key,
    manifest_key,
    name_of_manifest_key,
    pack_key,
)
from asyncbackup.manifest import PACKED_FORMAT_VERSION, Manifest
from asyncbackup.packs import PackIndex, build_pack
from asyncbackup.storage.base import Storage

LIMIT = 1 << 30


async def load_manifest(store: Storage, name: str) -> Manifest:
    return Manifest.from_json(await store.get(manifest_key(name)), where=name)


async def load_index(store: Storage, name: str) -> PackIndex:
    return PackIndex.decode(await store.get(index_key(name)), where=name, limit=LIMIT)


def ordered_refs(manifest: Manifest) -> list[str]:
    """The backup's distinct chunk refs, in the order of its entries."""
    return list(dict.fromkeys(ref for entry in manifest.entries for ref in entry.chunks))


async def pack_backup(
    store: Storage, name: str, *, per_pack: int, known: PackIndex | None = None
) -> PackIndex:
    """Pack backup ``name``'s chunks (see the module docstring); return its INDEX."""
    manifest = await load_manifest(store, name)
    refs = ordered_refs(manifest)
    index = known.restricted(refs) if known is not None else PackIndex()
    new = [ref for ref in refs if ref not in index]
    for start in range(0, len(new), per_pack):
        group = []
        for ref in new[start : start + per_pack]:
            stored = await store.get(CHUNKS + ref)
            raw = decode(stored, codec_of_ref(ref), limit=LIMIT, where=ref)
            group.append((ref, stored, len(raw)))
        pack = build_pack(group)
        await store.put(pack_key(pack.pack_id), pack.data, digest=pack.pack_id)
        index.add_pack(pack.pack_id, len(pack.data), pack.chunks)
    await store.put(index_key(name), index.encode(name))
    packed = replace(manifest, format_version=PACKED_FORMAT_VERSION)
    await store.put(manifest_key(name), packed.to_bytes())
    return index


async def drop_chunk_objects(store: Storage) -> None:
    """Delete every chunk object: from now on every chunk lies only in packs."""
    page, token = await store.list_page(CHUNKS, None)
    while True:
        for key in page:
            await store.delete(key)
        if token is None:
            return
        page, token = await store.list_page(CHUNKS, token)


async def backup_names(store: Storage) -> list[str]:
    keys, names, token = [], [], None
    while True:
        page, token = await store.list_page(BACKUPS, token)
        keys += page
        if token is None:
            break
    for key in keys:
        name = name_of_manifest_key(key)
        if name is not None:
            names.append(name)
    return sorted(names)


async def unreadable_chunks(store: Storage, *, reread_index: bool = False) -> list[str]:
    """Every chunk of every committed backup that cannot be read back with its right bytes,
    as "backup: ref: why": from the place its INDEX gives, else from its chunk object."""
    problems = []
    for name in await backup_names(store):
        manifest = await load_manifest(store, name)
        index = PackIndex()
        if manifest.format_version == PACKED_FORMAT_VERSION:
            try:
                index = await load_index(store, name)
            except Exception as exc:
                problems.append(f"{name}: INDEX: {exc}")
                continue
        for ref in ordered_refs(manifest):
            why = await _why_unreadable(store, index, ref)
            if why:
                problems.append(f"{name}: {ref[:12]}: {why}")
    return problems


async def _why_unreadable(store: Storage, index: PackIndex, ref: str) -> str:
    place = index.get(ref)
    try:
        if place is None:
            stored = await store.get(CHUNKS + ref)
        else:
            stored = await store.get_range(pack_key(place.pack), place.offset, place.length)
    except Exception as exc:
        return f"cannot be read: {exc}"
    raw = decode(stored, codec_of_ref(ref), limit=LIMIT, where=ref)
    if hashlib.sha256(raw).hexdigest() != digest_of_ref(ref):
        return "wrong bytes"
    return ""


async def pack_keys(store: Storage) -> set[str]:
    page, token = await store.list_page("packs/", None)
    keys = set(page)
    while token is not None:
        page, token = await store.list_page("packs/", token)
        keys |= set(page)
    return keys
