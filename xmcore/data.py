"""The data model every dataset plugin returns, and the torch datasets built on it.

A :class:`Split` holds items of two modalities.  The first modality's items are
the *owners* (images); each item of the second modality (a caption) belongs to
one owner, ``owner[j]``.  Several captions per image is the normal case in
this field (Flickr30k and COCO have five).  Modalities are plain names, so a
dataset of audio clips and captions has the same shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np


@dataclass
class Split:
    modalities: tuple[str, str]  # (owner modality, member modality), e.g. ("image", "text")
    items: dict[str, Sequence[Any]]  # modality -> raw items (PIL images, strings, ...)
    owner: np.ndarray  # owner[j]: index of the first-modality item that item j of the second belongs to
    labels: np.ndarray | None = None  # optional class id per owner item

    def __post_init__(self) -> None:
        self.owner = np.asarray(self.owner, dtype=np.int64)
        first, second = self.modalities
        if set(self.items) != {first, second}:
            raise ValueError(f"split items must have exactly the modalities {self.modalities}, got {sorted(self.items)}")
        if len(self.owner) != len(self.items[second]):
            raise ValueError(f"owner has {len(self.owner)} entries for {len(self.items[second])} {second} items")
        if len(self.owner) and (self.owner.min() < 0 or self.owner.max() >= len(self.items[first])):
            raise ValueError(f"owner indices must lie in [0, {len(self.items[first])})")

    def __len__(self) -> int:
        return len(self.owner)

    def groups(self, modality: str) -> np.ndarray:
        """Relevance group of each item of ``modality``: an item is relevant to those of the same group."""
        first, second = self.modalities
        return np.arange(len(self.items[first])) if modality == first else self.owner


@dataclass
class RetrievalData:
    splits: dict[str, Split]
    description: str = ""
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def modalities(self) -> tuple[str, str]:
        return next(iter(self.splits.values())).modalities


Transform = Callable[[Any], Any]


class PairDataset:
    """Training pairs: one per second-modality item, with its owner (a caption and its image)."""

    def __init__(self, split: Split, preprocess: dict[str, Transform], augment: dict[str, list[Transform]]):
        self.split = split
        self.preprocess = preprocess
        self.augment = augment

    def __len__(self) -> int:
        return len(self.split)

    def _item(self, modality: str, index: int) -> Any:
        item = self.split.items[modality][index]
        for aug in self.augment.get(modality, ()):
            item = aug(item)
        return self.preprocess[modality](item)

    def __getitem__(self, j: int) -> dict[str, Any]:
        first, second = self.split.modalities
        i = int(self.split.owner[j])
        return {first: self._item(first, i), second: self._item(second, j), "group": i}


class ItemDataset:
    """The items of one modality, in order, for embedding (evaluation, indexing)."""

    def __init__(self, items: Sequence[Any], preprocess: Transform):
        self.items = items
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"index": index, "item": self.preprocess(self.items[index])}
