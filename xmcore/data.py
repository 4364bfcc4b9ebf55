"""The data model every dataset plugin returns, and the torch datasets built on it.

A :class:`Split` holds items of two or more modalities.  The first modality's
items are the *owners* (images); each item of the other, *member* modalities (a
caption) belongs to one owner, ``owner[j]``.  Several captions per image is the
normal case in this field (Flickr30k and COCO have five).  With more than one
member modality the members are aligned: item ``j`` of each is the same member
in another form (caption ``j`` as text and as speech), so one ``owner`` array
serves them all.  Modalities are plain names, so a dataset of sound clips and
captions has the same shape.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np


@dataclass
class Split:
    modalities: tuple[str, ...]  # (owner modality, member modalities...), e.g. ("image", "text")
    items: dict[str, Sequence[Any]]  # modality -> raw items (PIL images, strings, ...)
    owner: np.ndarray  # owner[j]: index of the first-modality item that member j (of every member modality) belongs to
    labels: np.ndarray | None = None  # optional class id per owner item
    relevance: str = "owner"  # "owner": a caption is relevant to its own image; "label": to every item of its class
    member_labels: np.ndarray | None = None  # class ids of the members, when not their owner's

    def __post_init__(self) -> None:
        self.owner = np.asarray(self.owner, dtype=np.int64)
        if self.labels is not None:
            self.labels = np.asarray(self.labels, dtype=np.int64)
            if len(self.labels) != len(self.items[self.modalities[0]]):
                raise ValueError("labels must have one entry per item of the first modality")
        if self.relevance not in ("owner", "label") or (self.relevance == "label" and self.labels is None):
            raise ValueError("relevance must be 'owner', or 'label' with labels given")
        self.modalities = tuple(self.modalities)
        if len(self.modalities) < 2 or len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"a split needs two or more different modalities, got {self.modalities}")
        first = self.modalities[0]
        if set(self.items) != set(self.modalities):
            raise ValueError(f"split items must have exactly the modalities {self.modalities}, got {sorted(self.items)}")
        for member in self.members:
            if len(self.owner) != len(self.items[member]):
                raise ValueError(f"owner has {len(self.owner)} entries for {len(self.items[member])} {member} items")
        if len(self.owner) and (self.owner.min() < 0 or self.owner.max() >= len(self.items[first])):
            raise ValueError(f"owner indices must lie in [0, {len(self.items[first])})")

    def __len__(self) -> int:
        return len(self.owner)

    @property
    def members(self) -> tuple[str, ...]:
        """The member modalities: every modality but the owners'."""
        return self.modalities[1:]

    def groups(self, modality: str) -> np.ndarray:
        """Relevance group of each item of ``modality``: an item is relevant to those of the same group."""
        first = self.modalities[0]
        if self.relevance == "label":
            if modality == first:
                return self.labels
            return self.member_labels if self.member_labels is not None else self.labels[self.owner]
        return np.arange(len(self.items[first])) if modality == first else self.owner

    def subset(self, keep_first: np.ndarray, keep_second: np.ndarray) -> "Split":
        """The split restricted to the kept owners and members (boolean masks), owners re-indexed."""
        first = self.modalities[0]
        keep_second = keep_second & keep_first[self.owner]
        new_index = np.cumsum(keep_first) - 1
        items = {first: [x for x, k in zip(self.items[first], keep_first) if k]}
        items.update({m: [x for x, k in zip(self.items[m], keep_second) if k] for m in self.members})
        return Split(
            self.modalities,
            items,
            new_index[self.owner[keep_second]],
            None if self.labels is None else self.labels[keep_first],
            self.relevance,
            None if self.member_labels is None else self.member_labels[keep_second],
        )

    def select(self, modalities: Sequence[str]) -> "Split":
        """The split with only ``modalities`` (two or more of its own), relevance unchanged.

        Without the owner modality the first one named becomes the owner, one per member, and the old
        owners (or their classes) become class labels: a speech clip stays relevant to every caption of
        its picture, as in the full split."""
        modalities = tuple(modalities)
        unknown = [m for m in modalities if m not in self.modalities]
        if unknown or len(modalities) < 2 or len(set(modalities)) != len(modalities):
            raise ValueError(f"cannot select {list(modalities)} from a split of {list(self.modalities)}: name two or more of its modalities")
        if modalities[0] == self.modalities[0]:
            return Split(modalities, {m: self.items[m] for m in modalities}, self.owner, self.labels, self.relevance,
                         self.member_labels)
        if self.modalities[0] in modalities:
            raise ValueError(f"name the owner modality '{self.modalities[0]}' first, or leave it out")
        groups = self.groups(modalities[0])
        return Split(modalities, {m: self.items[m] for m in modalities}, np.arange(len(self.owner)),
                     labels=groups, relevance="label")


@dataclass
class RetrievalData:
    splits: dict[str, Split]
    description: str = ""
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def modalities(self) -> tuple[str, ...]:
        return next(iter(self.splits.values())).modalities


Transform = Callable[[Any], Any]


class LazyItem:
    """An item whose content is read only when needed (in a DataLoader worker): ``load()`` returns it,
    ``check()`` says why it cannot be used, or ``None``."""

    def load(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def check(self) -> str | None:
        try:
            self.load()
        except Exception as exc:  # noqa: BLE001
            return f"unreadable ({type(exc).__name__}: {exc})"
        return None


def outside_folder(path: Path, root: Path | None) -> str | None:
    """Why reading ``path`` would leave the data folder ``root``, or ``None``: a path inside ``root`` that a
    symbolic link (the file, or a folder on the way) takes outside it.  A path written outside ``root``
    (absolute, or with ``..``, in a manifest) is what its author named, and is not judged here."""
    if root is None:
        return None
    root = Path(os.path.abspath(root))
    written = Path(os.path.abspath(path))
    if not written.is_relative_to(root):
        return None
    target, real_root = written.resolve(), root.resolve()
    if target.is_relative_to(real_root):
        return None
    return (f"symbolic link out of the data folder ({written.relative_to(root)} leads to {target}, outside {root}; "
            "copy the file into the data folder)")


def name_problem(path: Path) -> str | None:
    """Why a file's name cannot be used, or ``None``: bytes that are not UTF-8 (Python holds them as lone
    surrogates), which no JSON file -- an index's metadata, a report -- can hold as text."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError as exc:
        shown = os.fsencode(exc.object[exc.start:exc.end])
        return f"file name is not UTF-8 (byte {', '.join(f'0x{b:02x}' for b in shown)} in {path.name!r}; rename the file)"
    return None


def image_problem(load: Callable[[], Any]) -> str | None:
    """Why an image cannot be used, or ``None``, after a full decode (so a truncated file is caught): too large
    (by its header, before decoding) or unreadable."""
    from xmcore.errors import QueryError

    try:
        load()
    except QueryError as exc:  # xmcore.media.open_image: more pixels than MAX_PIXELS
        return str(exc)
    except Exception as exc:  # noqa: BLE001 -- PIL raises many types for bad files
        return f"unreadable image ({type(exc).__name__}: {exc})"
    return None


@dataclass(frozen=True)
class ImageFile(LazyItem):
    """An image on disk; with ``root``, the data folder it must not be led out of by a symbolic link."""

    path: Path
    root: Path | None = None

    def load(self):
        from xmcore.media import open_image

        return open_image(self.path)

    def check(self) -> str | None:
        """Why the image cannot be used, or ``None``: missing, led out of the data folder, too large, unreadable."""
        if not self.path.is_file():
            return "missing file"
        return name_problem(self.path) or outside_folder(self.path, self.root) or image_problem(self.load)

    def fingerprint(self) -> str:
        """What identifies the file's content for caches: path, size and modification time."""
        try:
            st = self.path.stat()
        except OSError:
            return f"{self.path}:missing"
        return f"{self.path}:{st.st_size}:{st.st_mtime_ns}"

    def __str__(self) -> str:
        return str(self.path)


def materialize(item: Any) -> Any:
    """A lazy item becomes its content; anything else is already content."""
    return item.load() if isinstance(item, LazyItem) else item


def _text_problem(text: Any) -> str | None:
    if not isinstance(text, str):
        return f"caption is not text ({type(text).__name__})"
    return "empty caption" if not text.strip() else None


def clean_split(split: Split, workers: int = 8) -> tuple[Split, dict[str, Any]]:
    """Drop unusable items -- missing or unreadable files, empty captions, images left without captions.

    Returns the cleaned split and a report: items used and skipped per modality,
    a count per reason, and every skipped item with its reason.
    """
    first, members = split.modalities[0], split.members
    firsts = split.items[first]
    checks = [x for m in split.modalities for x in split.items[m] if isinstance(x, LazyItem)]
    with ThreadPoolExecutor(max_workers=workers) as pool:  # decoding releases the GIL
        verdicts = dict(zip(map(id, checks), pool.map(lambda x: x.check(), checks)))
    problems: list[dict[str, str]] = []
    keep_first = np.ones(len(firsts), dtype=bool)
    for i, item in enumerate(firsts):
        reason = verdicts.get(id(item))
        if reason:
            keep_first[i] = False
            problems.append({"modality": first, "item": str(item), "reason": reason})
    keep_second = np.ones(len(split.owner), dtype=bool)
    for member in members:
        for j, item in enumerate(split.items[member]):
            reason = _text_problem(item) if member == "text" else verdicts.get(id(item))
            if reason and keep_second[j]:  # one problem per member, in whichever of its forms it shows first
                keep_second[j] = False
                shown = item if isinstance(item, LazyItem) else f"{member} {j}"
                problems.append({"modality": member, "item": f"{shown} of {firsts[split.owner[j]]}", "reason": reason})
    has_caption = np.zeros(len(firsts), dtype=bool)
    has_caption[split.owner[keep_second]] = True
    for i in np.flatnonzero(keep_first & ~has_caption):
        keep_first[i] = False
        problems.append({"modality": first, "item": str(firsts[i]), "reason": f"no usable {' or '.join(members)}"})
    cleaned = split.subset(keep_first, keep_second)
    reasons = Counter(p["reason"].split(" (")[0] for p in problems)
    report = {
        "used": {m: len(cleaned.items[m]) for m in split.modalities},
        "skipped": {m: sum(p["modality"] == m for p in problems) for m in split.modalities},
        "reasons": dict(reasons),
        "problems": problems,
    }
    return cleaned, report


def generated_splits(counts: Mapping[str, int], seed: int, make_split: Callable[[int, np.random.Generator], Split]) -> dict[str, Split]:
    """The splits of a generated dataset: ``make_split(count, rng)`` for each split with items, each from a
    generator of its own seeded by (``seed``, the split's position), so one split's size never changes
    another's items."""
    return {name: make_split(count, np.random.default_rng([seed, index]))
            for index, (name, count) in enumerate(counts.items()) if count}


def distinct_captions(write: Callable[[], str], count: int) -> list[str]:
    """``count`` captions from ``write()``: paraphrases differ (a few retries each); a scene with fewer
    paraphrases than asked repeats them."""
    written: list[str] = []
    for _ in range(count * 4):
        text = write()
        if text not in written:
            written.append(text)
        if len(written) == count:
            break
    while len(written) < count:
        written.append(written[len(written) % max(1, len(written))])
    return written


def seeded_split(count: int, ratios: Sequence[float], seed: int) -> dict[str, np.ndarray]:
    """Indices of ``count`` items split into train/val/test by ``ratios``, shuffled with ``seed``."""
    order = np.random.default_rng(seed).permutation(count)
    total = float(sum(ratios))
    cuts = np.floor(np.cumsum(ratios)[:-1] / total * count).astype(int)
    parts = np.split(order, cuts)
    return {name: np.sort(idx) for name, idx in zip(("train", "val", "test"), parts) if len(idx)}


def loss_groups(split: Split, group_by: str) -> np.ndarray:
    """Each first-modality item's group for the losses (recipe key ``loss.groups``): its relevance group
    (itself, or its class where relevance is by class), itself (``pair``), or its class (``label``)."""
    first = split.modalities[0]
    if group_by == "pair":
        return np.arange(len(split.items[first]))
    if group_by != "label":
        return split.groups(first)
    groups = split.labels.copy()
    unknown = np.flatnonzero(groups < 0)
    groups[unknown] = -(unknown + 1)  # an item without a class is a group of its own, never a class's
    return groups


class PairDataset:
    """Training pairs: one per member (a caption) with its owner (its image) -- with several member
    modalities, the member in each of its forms -- or with ``sample_members``, one per owner with one of
    its members drawn at random (caption sampling)."""

    def __init__(
        self,
        split: Split,
        preprocess: dict[str, Transform],
        augment: dict[str, list[Transform]],
        sample_members: bool = False,
        group_by: str = "relevance",
    ):
        self.split = split
        self.preprocess = preprocess
        self.augment = augment
        self.groups = loss_groups(split, group_by)
        self.members = None
        if sample_members:
            order = np.argsort(split.owner, kind="stable")
            bounds = np.searchsorted(split.owner[order], np.arange(len(split.items[split.modalities[0]]) + 1))
            self.members = [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def __len__(self) -> int:
        return len(self.split) if self.members is None else len(self.members)

    def _item(self, modality: str, index: int) -> Any:
        item = materialize(self.split.items[modality][index])
        for aug in self.augment.get(modality, ()):
            item = aug(item)
        return self.preprocess[modality](item)

    def __getitem__(self, j: int) -> dict[str, Any]:
        first = self.split.modalities[0]
        if self.members is not None:  # j is an owner; draw one of its members
            i, j = j, int(random.choice(self.members[j]))
        else:
            i = int(self.split.owner[j])
        out = {first: self._item(first, i), "group": int(self.groups[i])}
        out.update({m: self._item(m, j) for m in self.split.members})
        return out


class ItemDataset:
    """The items of one modality, in order, for embedding (evaluation, indexing)."""

    def __init__(self, items: Sequence[Any], preprocess: Transform):
        self.items = items
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"index": index, "item": self.preprocess(materialize(self.items[index]))}
