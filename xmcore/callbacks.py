"""In-loop retrieval validation: the evaluator's metrics on the validation split, during training.

Checkpoint selection can then use what retrieval is judged by (``rsum`` by default)
rather than the loss, which tracks it only loosely.
"""

from __future__ import annotations

from typing import Any, Callable

import pytorch_lightning as pl
import torch

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
