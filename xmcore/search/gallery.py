"""The gallery: the items of a dataset's splits that an index holds, their metadata, and embedding them in
shards (each shard recorded in ``building.json`` once written, so that a rerun keeps it)."""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from xmcore.errors import XmcoreError
from xmcore.io import atomic_open, file_sha256 as sha256, write_json
from xmcore.media import servable_type
from xmcore.search.folder import Build, save_media, save_npy


@dataclass
class GalleryItem:
    item: Any  # what the encoder's preprocessor reads (after materialising a LazyItem)
    meta: dict[str, Any]
    owner: tuple[str, int] | None = None  # (owner modality, its row among this build's items), for a member


def describe_item(item: Any) -> dict[str, Any]:
    """What the metadata says of an item: a caption, a file (and its media type, when an index may serve
    it), or a short description of a lazy item without a file of its own (e.g. a tar member)."""
    from xmcore.data import LazyItem

    if isinstance(item, str):
        return {"caption": item}
    path = getattr(item, "path", None) if isinstance(item, LazyItem) else None
    if path is not None:
        meta = {"path": str(Path(path).resolve())}
        kind = servable_type(path)
        return meta | ({"media_type": kind} if kind else {})
    if not str(item).startswith("<"):  # a described item, not a bare object
        return {"source": str(item)[:200]}
    return {}


def gallery_items(data, splits: Sequence[str], modalities: Sequence[str]) -> dict[str, list[GalleryItem]]:
    """The items of ``splits`` per modality, each with its metadata (caption or file, label) and owner.

    A split's first modality holds the owners; every other (member) modality's item ``j`` belongs to
    owner ``split.owner[j]``."""
    unknown = [s for s in splits if s not in data.splits]
    if unknown:
        raise XmcoreError(f"--split: the data has no split {', '.join(unknown)}; it has: {', '.join(data.splits)}")
    out: dict[str, list[GalleryItem]] = {m: [] for m in modalities}
    for split_name in splits:
        split = data.splits[split_name]
        first = split.modalities[0]
        offset_first = len(out.get(first, []))
        for modality in modalities:
            if modality not in split.items:
                raise XmcoreError(f"--modality: the data has no '{modality}' items; it has: {', '.join(split.modalities)}")
            out[modality] += _split_items(split, split_name, modality, first in modalities, offset_first)
    return out


def _split_items(split, split_name: str, modality: str, owners_indexed: bool, offset_first: int) -> list[GalleryItem]:
    first = split.modalities[0]
    if modality == first:
        labels = split.labels
    else:
        labels = split.member_labels
        if labels is None and split.labels is not None:
            labels = split.labels[split.owner]
    items = []
    for j, item in enumerate(split.items[modality]):
        meta: dict[str, Any] = {"split": split_name, **describe_item(item)}
        if labels is not None:
            meta["label"] = int(labels[j])
        owner = (first, offset_first + int(split.owner[j])) if modality != first and owners_indexed else None
        items.append(GalleryItem(item, meta, owner))
    return items


def gallery_fingerprint(items: Sequence[GalleryItem]) -> dict[str, Any]:
    """What tells two listings of a modality's gallery apart, cheaply: how many items, a hash of the items
    themselves (as the feature cache fingerprints them) and one of their metadata and owners, all in order."""
    from xmcore.cache import data_fingerprint

    listing = hashlib.sha256()
    for entry in items:
        listing.update(json.dumps([entry.meta, entry.owner], sort_keys=True, default=str).encode())
        listing.update(b"\n")
    items_hash = data_fingerprint(g.item for g in items)  # it iterates once: no list of every item beside the gallery
    return {"count": len(items), "items": items_hash, "listing": listing.hexdigest()}


def embed_rows(module, modality: str, items: Sequence[GalleryItem], batch_size: int, num_workers: int, progress) -> np.ndarray:
    """The L2-normalised embeddings of ``items`` (one modality), in batches, in this process."""
    import torch
    from torch.utils.data import DataLoader

    from xmcore.data import ItemDataset
    from xmcore.datamodule import ItemCollate

    preprocessor = module.encoders[modality].preprocessor
    loader = DataLoader(ItemDataset([g.item for g in items], preprocessor), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=ItemCollate(preprocessor))
    out = []
    with torch.no_grad():
        for batch in loader:
            out.append(module.embed(modality, batch["item"]).float().numpy())
            progress(len(batch["index"]))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


class Progress:
    """A tqdm bar on stderr (nothing when tqdm is missing)."""

    def __init__(self, total: int, desc: str):
        try:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="item", file=sys.stderr, dynamic_ncols=True)
        except ImportError:  # pragma: no cover - tqdm comes with Lightning
            self.bar = None

    def __call__(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def shard_plan(build: Build, modality: str, count: int, shard_size: int) -> list[tuple[str, int, int]]:
    """This build's shards of the modality as ``(file, first row, end row)``, rows counted among this build's
    items; the files continue the numbering of the shards an earlier --add wrote."""
    before = build.before(modality)
    first_shard = len(before["shards"]) if before else 0
    return [(f"embeddings/{modality}-{first_shard + k:05d}.npy", lo, min(lo + shard_size, count))
            for k, lo in enumerate(range(0, count, shard_size))]


def embed_shards(build: Build, module, modality: str, items: list[GalleryItem], shard_size: int, batch_size: int,
                 num_workers: int) -> list[dict[str, Any]]:
    """Every shard of the modality's embeddings (those an earlier --add wrote, then this build's), skipping
    the ones ``building.json`` records as written and intact."""
    before = build.before(modality)
    shards = list(before["shards"]) if before else []
    progress = Progress(len(items), f"embedding {modality}")
    for name, lo, hi in shard_plan(build, modality, len(items), shard_size):
        rows = items[lo:hi]
        if build.shard_done(name):
            progress(len(rows))
        else:
            save_npy(build.out_dir / name, embed_rows(module, modality, rows, batch_size, num_workers, progress))
            build.state["shards"][name] = {"rows": len(rows), "sha256": sha256(build.out_dir / name)}
            write_json(build.out_dir / "building.json", build.state)
        shards.append({"file": name, "rows": len(rows)})
    progress.close()
    return shards


def metadata_lines(build: Build, modality: str, items: Sequence[GalleryItem], start: int = 0) -> tuple[list[str], set[str]]:
    """The metadata lines of ``items`` (this build's rows ``start`` on, each line ending in a newline) and the
    media types they are served as; copies of items without a file of their own go into media/."""
    before = build.before(modality)
    lines, media_types = [], set()
    for row, entry in enumerate(items, start=(before["count"] if before else 0) + start):
        meta = {"id": f"{modality}-{row}", "modality": modality, **entry.meta}
        if "caption" not in meta and "media_type" not in meta:  # no file of its own, or one no browser shows
            meta.update(save_media(build.out_dir, meta["id"], entry.item))
        if entry.owner is not None:
            owner, owner_row = entry.owner
            meta["belongs_to"] = f"{owner}-{(build.before(owner) or {}).get('count', 0) + owner_row}"
        if "media_type" in meta:
            media_types.add(meta["media_type"])
        lines.append(json.dumps(meta, ensure_ascii=False) + "\n")
    return lines, media_types


def write_metadata(build: Build, modality: str, parts: Sequence[str | Path], media_types: set[str]) -> tuple[str, list[str]]:
    """The modality's metadata file (an --add's rows after the earlier ones) and the media types of all its
    items; ``parts`` are lines, or files of lines (what each process of a build on several processes wrote).

    The earlier file and the part files are copied in blocks (:func:`join_files`), so that rank 0 joins
    a gallery of any size in bounded memory; the checksum is taken on the way (``build.checksums``)."""
    before = build.before(modality)
    media_types = set(media_types) | set(before.get("media_types", []) if before else [])
    meta_rel = f"metadata/{modality}{build.suffix}.jsonl"
    earlier = [build.out_dir / before["metadata"]] if before else []
    build.checksums[meta_rel] = join_files(build.out_dir / meta_rel, [*earlier, *parts])
    return meta_rel, sorted(media_types)


# The most of a file join_files holds at once.
JOIN_BLOCK = 1 << 20


def join_files(path: Path, sources: Iterable[str | Path], block: int = JOIN_BLOCK) -> str:
    """``path`` written atomically as ``sources`` one after another (a file copied ``block`` bytes at a time,
    a string as UTF-8); its SHA-256."""
    digest = hashlib.sha256()
    with atomic_open(path) as out:
        for source in sources:
            if isinstance(source, str):
                data = source.encode("utf-8")
                out.write(data)
                digest.update(data)
                continue
            with open(source, "rb") as part:
                while data := part.read(block):
                    out.write(data)
                    digest.update(data)
    return digest.hexdigest()
