"""The LightningDataModule built from a dataset plugin's splits and the encoders' preprocessors."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from xmcore.components import Preprocessor
from xmcore.data import ItemDataset, PairDataset, RetrievalData, Transform


class PairCollate:
    """Collates training pairs with each modality's own preprocessor (picklable, for workers)."""

    def __init__(self, preprocessors: Mapping[str, Preprocessor]):
        self.preprocessors = dict(preprocessors)

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {m: p.collate([r[m] for r in rows]) for m, p in self.preprocessors.items()}
        out["group"] = torch.tensor([r["group"] for r in rows], dtype=torch.long)
        return out


class ItemCollate:
    def __init__(self, preprocessor: Preprocessor):
        self.preprocessor = preprocessor

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return {
            "index": torch.tensor([r["index"] for r in rows], dtype=torch.long),
            "item": self.preprocessor.collate([r["item"] for r in rows]),
        }


class RetrievalDataModule(pl.LightningDataModule):
    def __init__(
        self,
        data: RetrievalData,
        preprocessors: Mapping[str, Preprocessor],
        augment: Mapping[str, list[Transform]],
        batch_size: int,
        eval_batch_size: int,
        num_workers: int = 0,
        seed: int = 0,
        caption_sampling: bool = False,
        group_by: str = "relevance",
    ):
        super().__init__()
        self.data = data
        self.preprocessors = dict(preprocessors)
        self.augment = dict(augment)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.caption_sampling = caption_sampling
        self.group_by = group_by  # what the losses' groups are: "relevance", "pair" or "label" (recipe key loss.groups)

    def _loader(self, dataset, batch_size: int, shuffle: bool, collate) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate,
            generator=generator,
        )

    def train_dataloader(self) -> DataLoader:
        ds = PairDataset(self.data.splits["train"], self.preprocessors, self.augment, self.caption_sampling, self.group_by)
        return self._loader(ds, self.batch_size, True, PairCollate(self.preprocessors))

    def val_dataloader(self):
        if "val" not in self.data.splits:
            return []
        ds = PairDataset(self.data.splits["val"], self.preprocessors, {}, group_by=self.group_by)
        return self._loader(ds, self.eval_batch_size, False, PairCollate(self.preprocessors))

    def item_dataloaders(self, split: str) -> list[DataLoader]:
        """One loader per modality, items in order: what evaluation and indexing embed."""
        s = self.data.splits[split]
        return [
            self._loader(ItemDataset(s.items[m], self.preprocessors[m]), self.eval_batch_size, False, ItemCollate(self.preprocessors[m]))
            for m in s.modalities
        ]
