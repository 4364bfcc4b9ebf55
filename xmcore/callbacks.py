"""Callbacks and plugins of ``xmcore run``'s Trainer.

* In-loop retrieval validation: the evaluator's metrics on the validation split, during training, so
  that checkpoint selection can use what retrieval is judged by (``rsum`` by default) rather than the
  loss, which tracks it only loosely.
* What makes a killed run resume exactly and never leave a half-written checkpoint: the global
  generators' states in every checkpoint (:class:`ExactResume`), and checkpoints written to a
  temporary name beside their target, then renamed over it (:class:`AtomicCheckpointIO`).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint

from xmcore.evaluation import compute_metrics, evaluate, rank_directions


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


class RetrievalValidation(pl.Callback):
    def __init__(self, loaders: Callable[[], list], split, metrics: list, every_n_epochs: int = 1):
        self.loaders = loaders
        self.split = split
        self.metrics = metrics
        self.every_n_epochs = every_n_epochs

    def on_validation_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        embeddings = embed_items(module, self.split.modalities, self.loaders())
        values = evaluate(embeddings, self.split, self.metrics)[1]
        for key, value in values.items():
            module.log(f"val/{key}", value, prog_bar=key == "rsum")


class EndOnMaxSteps(pl.Callback):
    """Make a run that ``trainer.max_steps`` ends in mid-epoch end like one that ends with its epoch.

    Lightning validates (and so keeps a best checkpoint) at the end of an epoch, and logs every
    ``log_every_n_steps``: a run stopped by ``max_steps`` before its epoch ended would stop with no
    validation, no best checkpoint and, with fewer steps than ``log_every_n_steps``, nothing logged.
    Signalling the stop at the last step lets Lightning log that step and validate, as it does for
    an early stop.
    """

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True


class ExactResume(pl.Callback):
    """What a resumed run needs, besides Lightning's own state, to continue exactly where it stopped.

    * The global generators' states (Python's, numpy's, torch's CPU and CUDA) go into each checkpoint and
      are set again when the resumed run starts training, so dropout and everything else the model draws
      continues the stream it was drawing.  (The training data draws from generators of its own:
      :mod:`xmcore.datamodule`.)  Set at ``on_train_start``, after the sanity validation a resumed run
      does again, so nothing drawn in between counts.
    * The training loader's position in a mid-epoch checkpoint: Lightning saves it (the loader is
      stateful) but loads it only if it has not built the loader yet -- and ``estimated_stepping_batches``
      (the learning-rate schedule's length) builds it before the checkpoint's loops are restored.  So it
      is handed to the loader here, on the same condition Lightning's own would be (the fit loop restarts
      in mid-epoch).
    """

    KEY = "xmcore_generators"

    def __init__(self):
        self._pending: dict[str, Any] | None = None
        self._loader_states: list = []

    def on_save_checkpoint(self, trainer: pl.Trainer, module: pl.LightningModule, checkpoint: dict) -> None:
        np_state = np.random.get_state(legacy=False)
        checkpoint[self.KEY] = {
            "python": random.getstate(),
            "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                      "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                      "gauss": float(np_state["gauss"])},
            "torch": torch.random.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def on_load_checkpoint(self, trainer: pl.Trainer, module: pl.LightningModule, checkpoint: dict) -> None:
        self._pending = checkpoint.get(self.KEY)
        fit_loop = checkpoint.get("loops", {}).get("fit_loop", {})
        self._loader_states = fit_loop.get("state_dict", {}).get("combined_loader", [])

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        loader_states, self._loader_states = self._loader_states, []
        if loader_states and trainer.fit_loop.restarting:
            loaders = trainer.train_dataloader
            loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
            stateful = [dl for dl in loaders if hasattr(dl, "load_state_dict") and hasattr(dl, "state_dict")]
            for loader, state in zip(stateful, loader_states):
                loader.load_state_dict(state)
        self._set_generators()

    def _set_generators(self) -> None:
        states, self._pending = self._pending, None
        if not states:
            return
        version, internal, gauss = states["python"]
        random.setstate((version, tuple(internal), gauss))
        numpy = states["numpy"]
        np.random.set_state({"bit_generator": "MT19937", "state": {"key": numpy["key"].numpy().astype(np.uint32),
                             "pos": numpy["pos"]}, "has_gauss": numpy["has_gauss"], "gauss": numpy["gauss"]})
        torch.random.set_rng_state(states["torch"])
        if states["cuda"] and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states["cuda"])


class IntervalCheckpoint(ModelCheckpoint):
    """``checkpoint.every_n_steps`` / ``every_minutes``: Lightning's ModelCheckpoint writing last.ckpt, but
    at an epoch's last step (or the step a run stops at) only once the epoch has ended.

    A save at that step comes before the epoch's validation, and a run resumed from it restarts past the
    epoch's end: Lightning does not validate that epoch again, so the best checkpoint (and the evaluated
    weights) would differ from the uninterrupted run's.  Saved at ``on_train_epoch_end`` instead, after
    the validation and the best checkpoint's save; a run killed before then resumes from the step before.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._save_at_epoch_end = False

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        if trainer.should_stop or batch_idx + 1 >= trainer.num_training_batches:
            self._save_at_epoch_end = True
            return
        super().on_train_batch_end(trainer, module, outputs, batch, batch_idx)

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if self._save_at_epoch_end:
            self._save_at_epoch_end = False
            if not self._should_skip_saving_checkpoint(trainer):
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        super().on_train_epoch_end(trainer, module)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write a checkpoint to a temporary file beside its target, flush it to disk, then rename it over
    the target: a checkpoint is whole or absent, even when the process is killed while saving.

    (Lightning's own save goes through an fsspec transaction, which writes the temporary file in the
    system's temporary folder and *moves* it -- a copy, not a rename, when that folder is on another
    file system -- and leaves it behind when killed.)  Remote paths (``s3://`` ...) keep Lightning's way.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "://" in str(path) or storage_options is not None:
            return super().save_checkpoint(checkpoint, path, storage_options)
        from xmcore.io import atomic_torch_save

        path = Path(path)
        atomic_torch_save(checkpoint, path)
        _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform allows opening a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@torch.no_grad()
def embed_items(module, modalities, loaders) -> dict[str, torch.Tensor]:
    """Every item of each modality's loader, embedded, in item order.

    Under data parallelism each process embeds every world_size-th batch and the parts are
    all-gathered, so every process holds the same embeddings (and computes the same metrics)
    as one process that embedded them all (tests/test_distributed.py).
    """
    import torch.distributed as dist

    from xmcore.distributed import world_size

    world = world_size()
    rank = dist.get_rank() if world > 1 else 0
    embeddings = {}
    for modality, loader in zip(modalities, loaders, strict=True):
        parts, order = [], []
        for i, batch in enumerate(loader):
            if i % world != rank:
                continue
            order.append(batch["index"])
            parts.append(module.embed(modality, to_device(batch["item"], module.device)).float().cpu())
        if world > 1:
            gathered = [None] * world
            dist.all_gather_object(gathered, (order, parts))
            order = [o for g in gathered for o in g[0]]
            parts = [p for g in gathered for p in g[1]]
        embeddings[modality] = torch.cat(parts)[torch.argsort(torch.cat(order))]
    return embeddings


def metric_ids(metrics: list) -> list[str]:
    """The ids a list of metric callables produces, found by running them on a tiny evaluation."""
    import numpy as np

    from xmcore.data import Split

    owner = np.array([0, 0, 1, 2])
    split = Split(("image", "text"), {"image": range(3), "text": range(4)}, owner)
    g = torch.Generator().manual_seed(0)
    rankings = rank_directions({"image": torch.randn(3, 4, generator=g), "text": torch.randn(4, 4, generator=g)}, split)
    return list(compute_metrics(rankings, metrics))
