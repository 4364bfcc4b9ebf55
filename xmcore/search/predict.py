"""Embedding a gallery with Lightning's predict, on one process or many (``xmcore index ... trainer.devices=N
trainer.strategy=ddp [trainer.num_nodes=M]``).

Every process runs the whole command; Lightning starts the other local processes (or torchrun / SLURM
starts them all) and joins them in a process group.  The gallery's shards -- the very shards one process
writes, ``--shard-size`` rows each -- are dealt out in turn: shard ``i`` (counted over all modalities) to
rank ``i % world_size``.  A rank embeds its shards with ``Trainer.predict`` (a batch sampler of its own:
Lightning's DistributedSampler pads and interleaves, and stays out) and :class:`ShardWriter`, a
``BasePredictionWriter``, writes each finished shard: its embeddings, its metadata lines (and copies of items
without a file of their own), and a record with both checksums in ``building/rank-<r>.json``.

Rank 0 prepares the folder before anyone embeds (the datamodule's ``setup``, followed by Lightning's barrier:
the resume state, with the records of an interrupted run merged into ``building.json``).  Each rank records its
job, with its gallery's fingerprint, as it starts; after a barrier at the end rank 0 refuses a rank that listed
another gallery (:func:`~xmcore.search.folder.check_rank_jobs`), then joins the metadata parts in blocks,
builds the FAISS index and writes the manifest (:mod:`xmcore.search.build`).
A rerun after a kill keeps every recorded shard whose two files still match their checksums, whatever the
number of processes before.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.callbacks import BasePredictionWriter

from xmcore.errors import XmcoreError
from xmcore.io import atomic_write_text, file_sha256 as sha256, write_json
from xmcore.search.folder import Build, check_rank_jobs, merge_rank_records, metadata_part, rank_records, resume_state, save_npy
from xmcore.search.gallery import GalleryItem, Progress, metadata_lines, shard_plan

# The trainer keys `xmcore index` reads: where and on how many processes to embed (nothing trains here).
TRAINER_KEYS = ("accelerator", "devices", "num_nodes", "strategy", "precision", "enable_progress_bar")


def trainer_arguments(run_dir: Path, trainer_overrides: Sequence[str], plugins) -> dict[str, Any]:
    """The ``pytorch_lightning.Trainer`` arguments the ``trainer.*`` overrides name, checked by the recipe
    schema (a typo gets its "did you mean"); devices default to 1, as in a recipe."""
    from xmcore.recipe import load_recipe, validate

    keys = [o.partition("=")[0].strip().removeprefix("trainer.") for o in trainer_overrides]
    unused = [k for k in keys if k not in TRAINER_KEYS]
    if unused:
        raise XmcoreError(f"trainer.{unused[0]}: `xmcore index` trains nothing; it reads only "
                          f"{', '.join('trainer.' + k for k in TRAINER_KEYS)} (where and on how many processes to embed)")
    section = validate(load_recipe(run_dir / "recipe.yaml", list(trainer_overrides)), plugins).trainer
    return {"devices": 1} | {k: getattr(section, k) for k in keys}


# What Lightning says of this use of predict, all intended: ShardBatches returns every index of its shards, and
# a rank may have none of a modality's shards (or none left to embed).
LIGHTNING_NOTICES = (r"You are using a custom batch sampler `ShardBatches`", r"Total length of `DataLoader` across ranks is zero")


@dataclass
class Shard:
    modality: str
    file: str  # embeddings/<m>-<k>.npy: the name one process gives it
    lo: int  # its rows among this build's items of the modality
    hi: int

    @property
    def metadata(self) -> str:
        return metadata_part(self.file)


def all_shards(build: Build, gallery: dict[str, list[GalleryItem]], shard_size: int) -> list[Shard]:
    """This build's shards, modality after modality, in the order one process writes them."""
    return [Shard(m, name, lo, hi) for m, items in gallery.items()
            for name, lo, hi in shard_plan(build, m, len(items), shard_size)]


def shard_done(build: Build, shard: Shard) -> bool:
    """Recorded with its metadata, and both files still have their recorded checksums."""
    record = build.state["shards"].get(shard.file) or {}
    meta = build.out_dir / shard.metadata
    return (build.shard_done(shard.file) and "metadata_sha256" in record and meta.is_file()
            and sha256(meta) == record["metadata_sha256"])


class ShardBatches:
    """The batches of one rank's shards of one modality; none straddles two shards."""

    def __init__(self, shards: Sequence[Shard], batch_size: int):
        self.batches = [list(range(lo, min(lo + batch_size, s.hi))) for s in shards for lo in range(s.lo, s.hi, batch_size)]
        self.items = sum(s.hi - s.lo for s in shards)

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class GalleryEmbedder(pl.LightningModule):
    """A trained module's ``embed`` as ``predict_step``: dataloader ``i`` holds the gallery's ``i``-th modality."""

    def __init__(self, module, modalities: Sequence[str]):
        super().__init__()
        self.model = module
        self.gallery_modalities = list(modalities)

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        return batch["index"], self.model.embed(self.gallery_modalities[dataloader_idx], batch["item"])


class GalleryShards(pl.LightningDataModule):
    """One dataloader per modality over this rank's unfinished shards; rank 0 prepares the folder first."""

    def __init__(self, build: Build, job: dict[str, Any], gallery: dict[str, list[GalleryItem]], shards: list[Shard],
                 preprocessors: dict[str, Any], batch_size: int, num_workers: int):
        super().__init__()
        self.allow_zero_length_dataloader_with_multiple_devices = True  # a rank may have no shards (left)
        self.build, self.job, self.gallery, self.shards = build, job, gallery, shards
        self.preprocessors, self.batch_size, self.num_workers = preprocessors, batch_size, num_workers

    def setup(self, stage: str) -> None:
        if self.trainer.global_rank == 0:  # the others wait at Lightning's barrier after setup
            self.build.state = resume_state(self.build.out_dir, self.job, self.build.previous)
            write_json(self.build.out_dir / "building.json", self.build.state)
            for path in rank_records(self.build.out_dir):  # merged into building.json now
                path.unlink()

    def predict_dataloader(self):
        from torch.utils.data import DataLoader

        from xmcore.data import ItemDataset
        from xmcore.datamodule import ItemCollate

        if self.trainer.global_rank != 0:
            self.build.state = json.loads((self.build.out_dir / "building.json").read_text())
        rank, world = self.trainer.global_rank, self.trainer.world_size
        mine = [s for i, s in enumerate(self.shards) if i % world == rank and not shard_done(self.build, s)]
        loaders = []
        for modality, items in self.gallery.items():
            preprocessor = self.preprocessors[modality]
            batches = ShardBatches([s for s in mine if s.modality == modality], self.batch_size)
            loaders.append(DataLoader(ItemDataset([g.item for g in items], preprocessor), batch_sampler=batches,
                                      num_workers=self.num_workers, collate_fn=ItemCollate(preprocessor)))
        return loaders


class ShardWriter(BasePredictionWriter):
    """Writes each of this rank's shards once its last batch is embedded: embeddings, metadata lines, and the
    record of both (with checksums) in ``building/rank-<r>.json``."""

    def __init__(self, build: Build, job: dict[str, Any], gallery: dict[str, list[GalleryItem]], shards: list[Shard],
                 shard_size: int):
        super().__init__(write_interval="batch")
        self.build, self.job, self.gallery, self.shard_size = build, job, gallery, shard_size
        self.modalities = list(gallery)
        self.shards = {(s.modality, s.lo): s for s in shards}
        self.parts: dict[str, list] = {}
        self.records: dict[str, dict[str, Any]] = {}
        self.ready: float | None = None  # when every process has started and loaded its shards (rank 0 says)

    def on_predict_start(self, trainer, pl_module) -> None:
        self.ready = time.perf_counter()
        self._record(trainer.global_rank)  # its job, so that rank 0 sees a process that listed another gallery

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        index, embeddings = prediction
        first = int(index[0])
        shard = self.shards[(self.modalities[dataloader_idx], first - first % self.shard_size)]
        self.parts.setdefault(shard.file, []).append(embeddings.float().cpu().numpy())
        if sum(len(p) for p in self.parts[shard.file]) == shard.hi - shard.lo:
            self._write(shard, trainer.global_rank)

    def _write(self, shard: Shard, rank: int) -> None:
        out = self.build.out_dir
        save_npy(out / shard.file, np.concatenate(self.parts.pop(shard.file)))
        lines, media_types = metadata_lines(self.build, shard.modality, self.gallery[shard.modality][shard.lo:shard.hi],
                                            start=shard.lo)
        atomic_write_text(out / shard.metadata, "".join(lines))
        self.records[shard.file] = {"rows": shard.hi - shard.lo, "sha256": sha256(out / shard.file),
                                    "metadata_sha256": sha256(out / shard.metadata), "media_types": sorted(media_types)}
        self._record(rank)

    def _record(self, rank: int) -> None:
        write_json(self.build.out_dir / "building" / f"rank-{rank:05d}.json", {"job": self.job, "shards": self.records})


class EmbeddingProgress(pl.Callback):
    """A bar on stderr, in rank 0, of the items it embeds (Lightning's own bar writes to stdout, which
    ``xmcore index`` keeps for its summary)."""

    def on_predict_start(self, trainer, pl_module) -> None:
        total = sum(loader.batch_sampler.items for loader in trainer.predict_dataloaders)
        self.bar = Progress(total, f"embedding (rank 0 of {trainer.world_size})") if trainer.global_rank == 0 else None

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.bar is not None:
            self.bar(len(batch["index"]))

    def on_predict_end(self, trainer, pl_module) -> None:
        if self.bar is not None:
            self.bar.close()


def embed_with_trainer(build: Build, job: dict[str, Any], gallery: dict[str, list[GalleryItem]], module,
                       trainer_args: dict[str, Any], shard_size: int, batch_size: int, num_workers: int) -> bool:
    """Every shard of this build embedded and written by the processes ``trainer_args`` ask for; ``True`` in
    rank 0 (``build.state`` then records every shard), ``False`` in the others, whose work is done."""
    shards = all_shards(build, gallery, shard_size)
    writer = ShardWriter(build, job, gallery, shards, shard_size)
    callbacks = [writer]
    trainer_args = dict(trainer_args)
    if trainer_args.pop("enable_progress_bar", None) is not False:
        callbacks.append(EmbeddingProgress())
    try:
        trainer = pl.Trainer(**trainer_args, logger=False, enable_checkpointing=False, enable_model_summary=False,
                             enable_progress_bar=False, use_distributed_sampler=False, callbacks=callbacks)
    except (ValueError, TypeError, RuntimeError, ImportError) as exc:  # MisconfigurationException is a ValueError
        raise XmcoreError(f"trainer: Lightning refused the trainer keys: {exc}") from None
    preprocessors = {m: module.encoders[m].preprocessor for m in gallery}
    started = time.perf_counter()
    with warnings.catch_warnings():
        for message in LIGHTNING_NOTICES:
            warnings.filterwarnings("ignore", message=message)
        trainer.predict(GalleryEmbedder(module, list(gallery)), return_predictions=False,
                        datamodule=GalleryShards(build, job, gallery, shards, preprocessors, batch_size, num_workers))
    trainer.strategy.barrier("xmcore index: every shard written")
    if trainer.global_rank != 0:
        return False
    _report(build, shards, trainer.world_size, started, writer.ready)
    return True


def _report(build: Build, shards: list[Shard], world_size: int, started: float, ready: float | None) -> None:
    """Rank 0, once all are done: every shard recorded (``build.state``), and the pace said on stderr."""
    end = time.perf_counter()
    check_rank_jobs(build.out_dir, build.state["job"])
    per_rank = merge_rank_records(build.out_dir, build.state)
    missing = [s.file for s in shards if not shard_done(build, s)]
    if missing:
        raise XmcoreError(f"{build.out_dir}: {len(missing)} shards were not written ({', '.join(missing[:3])}); "
                          "run the same command again to embed them")
    embedded, ready = sum(per_rank.values()), ready or started  # rank 0 with nothing to embed is never "ready"
    shares = " + ".join(map(str, per_rank.values())) or "0"
    print(f"embedded {embedded} items on {world_size} processes in {end - ready:.1f} s "
          f"({embedded / max(end - ready, 1e-9):.1f} items/s; per process: {shares}), after {ready - started:.1f} s "
          "starting the processes", file=sys.stderr)
