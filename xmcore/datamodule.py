"""The LightningDataModule built from a dataset plugin's splits and the encoders' preprocessors.

Training data is resumable exactly, mid-epoch included (a run killed and resumed ends as the
uninterrupted run does):

* the order of an epoch is a function of (seed, epoch) (:class:`EpochSampler`), not of how many
  epochs one process has drawn;
* each training pair draws its randomness (augmentations, caption sampling) from generators seeded
  by (seed, epoch, pair) (:class:`SeededPairs`), so it is the same whichever process, worker or
  resumed run loads it, and loading never moves the global generators the model draws from;
* the loader is stateful (:class:`ResumableLoader`): a mid-epoch checkpoint holds how many batches of
  the epoch were consumed (Lightning saves the loader's state; :class:`xmcore.callbacks.ExactResume`
  hands it back on resume), and the resumed loader skips them without loading them.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Sampler

from xmcore.components import Preprocessor
from xmcore.data import ItemDataset, PairDataset, RetrievalData, Transform


def derived_seed(*keys: int) -> int:
    """A 63-bit seed derived from integer keys (``seed``, ``epoch``, ...), well mixed (numpy's SeedSequence)."""
    return int(np.random.SeedSequence([k % 2**64 for k in keys]).generate_state(1, np.uint64)[0] >> 1)


@contextmanager
def seeded_generators(seed: int) -> Iterator[None]:
    """Python's, numpy's and torch's (CPU) global generators seeded with ``seed`` inside, as they were after."""
    cpu = torch.default_generator  # not torch.manual_seed: it seeds every device too, 100x slower
    py, np_state, torch_state = random.getstate(), np.random.get_state(legacy=False), cpu.get_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    cpu.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)
        cpu.set_state(torch_state)


class SeededPairs(PairDataset):
    """Training pairs indexed by ``(epoch, j)``: pair ``j`` with its randomness (augmentations, caption
    sampling) drawn from generators seeded by (seed, epoch, j).  A plain index ``j`` draws from the
    global generators, as a :class:`PairDataset` does."""

    seed: int = 0

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            return super().__getitem__(key)
        epoch, j = key
        if self.members is None and not any(self.augment.values()):  # nothing drawn: no generators to set
            return super().__getitem__(j)
        with seeded_generators(derived_seed(self.seed, epoch, j)):
            return super().__getitem__(j)


class EpochSampler(Sampler):
    """A shuffled order of ``size`` items that depends only on (seed, epoch); yields ``(epoch, j)``.

    Lightning calls :meth:`set_epoch` before each epoch (and forwards it through its distributed
    wrapper), so epoch ``e`` has the same order in a run that started at epoch 0 and in one resumed at ``e``.
    """

    def __init__(self, size: int, seed: int, epoch: int = 0):
        self.size, self.seed, self.epoch = size, seed, epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(derived_seed(self.seed, epoch)))
        return iter([(epoch, j) for j in order.tolist()])


class _Skipping:
    """A loader's batches of indices, less the first ``loader._skip`` (consumed before a mid-epoch
    checkpoint), read when an iteration starts: an iterator with persistent workers keeps this object
    from epoch to epoch and iterates it again for each."""

    def __init__(self, batches, loader: "ResumableLoader"):
        self.batches, self.loader = batches, loader

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        iterator = iter(self.batches)
        for _ in zip(range(self.loader._skip), iterator):
            pass
        return iterator


class ResumableLoader(DataLoader):
    """The training DataLoader, stateful for Lightning: its ``state_dict`` (saved in every checkpoint) holds
    the epoch and how many of its batches were consumed; after ``load_state_dict`` the next iteration
    of that epoch skips them, by index, without loading them.

    The iterator starts at the first batch requested rather than at ``iter()``: Lightning creates it
    before it tells the sampler the epoch (and a worker pool would already be loading the wrong one).
    The workers' base seed is derived from (seed, epoch) too.
    """

    def __init__(self, *args, seed: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.seed = seed
        self._consumed = 0  # batches of the current epoch handed out, the skipped ones included
        self._resume: dict[str, int] | None = None
        self._skip = 0

    def _epoch(self) -> int:
        return int(getattr(self.sampler, "epoch", 0))

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch(), "batches": self._consumed}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self._resume = {"epoch": int(state["epoch"]), "batches": int(state["batches"])}

    @property
    def _index_sampler(self):
        # DataLoader's iterators take their batches of indices from this (private) property
        return _Skipping(super()._index_sampler, self)

    def __iter__(self):
        return self._batches()

    def _batches(self):
        epoch = self._epoch()
        resume, self._resume = self._resume, None
        self._skip = resume["batches"] if resume and resume["epoch"] == epoch else 0
        if self.generator is not None:
            self.generator.manual_seed(derived_seed(self.seed, epoch, 1))
        try:
            iterator = super().__iter__()  # reads _index_sampler now
        finally:
            self._consumed, self._skip = self._skip, 0
        for batch in iterator:
            self._consumed += 1
            yield batch


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

    def _loader(self, dataset, batch_size: int, collate, cls=DataLoader, **kwargs) -> DataLoader:
        # A generator of its own: starting an iteration draws the workers' base seed from it, not from the
        # global generator the model draws from (which would then depend on how often the loaders started).
        return cls(
            dataset,
            batch_size=batch_size,
            drop_last=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate,
            generator=torch.Generator().manual_seed(self.seed),
            **kwargs,
        )

    def train_dataloader(self) -> ResumableLoader:
        ds = SeededPairs(self.data.splits["train"], self.preprocessors, self.augment, self.caption_sampling, self.group_by)
        ds.seed = self.seed
        trainer = self.trainer
        # The epoch the fit resumes at (a restored checkpoint's) before Lightning calls set_epoch
        epoch = trainer.current_epoch if trainer is not None else 0
        return self._loader(ds, self.batch_size, PairCollate(self.preprocessors), ResumableLoader,
                            sampler=EpochSampler(len(ds), self.seed, epoch), seed=self.seed)

    def val_dataloader(self):
        if "val" not in self.data.splits:
            return []
        ds = PairDataset(self.data.splits["val"], self.preprocessors, {}, group_by=self.group_by)
        return self._loader(ds, self.eval_batch_size, PairCollate(self.preprocessors))

    def item_dataloaders(self, split: str) -> list[DataLoader]:
        """One loader per modality, items in order: what evaluation and indexing embed."""
        s = self.data.splits[split]
        return [
            self._loader(ItemDataset(s.items[m], self.preprocessors[m]), self.eval_batch_size, ItemCollate(self.preprocessors[m]))
            for m in s.modalities
        ]
