"""The LightningModule: encoders -> fusion -> loss, and nothing else.

Every piece is a plugin component built from the recipe; this module only wires
them, logs, and configures the optimizer.  It never sees a recipe.

Two seams are kept open on purpose:

* :meth:`RetrievalModule.features` is the only place an encoder runs, so a cache
  of frozen-encoder features can stand in for it;
* :meth:`RetrievalModule.pair_loss` gathers every process's embeddings (with
  gradients) before the loss, so negatives come from the global batch.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import pytorch_lightning as pl
import torch
from torch import nn

from xmcore.components import Encoder, Fusion
from xmcore.distributed import gather, gather_with_grad
from xmcore.errors import XmcoreError


EMBEDDING_PARTS = ("encoders.", "fusion.")  # the state dict's keys an embedding uses


class RetrievalModule(pl.LightningModule):
    def __init__(
        self,
        encoders: Mapping[str, Encoder],
        fusion: Fusion,
        loss: nn.Module | None,
        modalities: tuple[str, ...],
        optimizer: Mapping[str, Any],
        frozen: set[str] = frozenset(),
        precomputed: set[str] = frozenset(),
        extra_checkpoint: Mapping[str, Any] | None = None,
        extra_losses: list[tuple[str, float, nn.Module]] = (),
        pairs: list[tuple[str, str]] | None = None,
    ):
        super().__init__()
        self.encoders = nn.ModuleDict(dict(encoders))
        self.fusion = fusion
        self.loss = loss
        # loss.extra: objectives added to the retrieval loss (their parameters train with the model)
        self.extra_losses = nn.ModuleList([m for _, _, m in extra_losses])
        names = [name for name, _, _ in extra_losses]
        self.extra_names = [f"{n}_loss" if names.count(n) == 1 else f"{n}_{i}_loss" for i, n in enumerate(names)]
        self.extra_weights = [float(w) for _, w, _ in extra_losses]
        self.modalities = tuple(modalities)
        # the modality pairs the losses train (recipe key loss.pairs); by default the owners with each other
        self.pairs = [tuple(p) for p in pairs] if pairs else [(self.modalities[0], m) for m in self.modalities[1:]]
        self.optimizer_cfg = dict(optimizer)
        self.frozen = set(frozen)
        self.precomputed = set(precomputed)  # modalities whose batches already hold the frozen encoder's features
        self.extra_checkpoint = dict(extra_checkpoint or {})
        for name in self.frozen:
            self.encoders[name].requires_grad_(False)
        self.train()  # Lightning restores each submodule's mode around evaluation, so set it right from the start

    def train(self, mode: bool = True):
        super().train(mode)
        for name in self.frozen:  # frozen encoders keep eval behaviour (BatchNorm statistics, dropout)
            self.encoders[name].eval()
        return self

    # ------------------------------------------------------------------ forward

    def features(self, modality: str, batch: Any) -> torch.Tensor:
        if modality in self.precomputed:
            return batch
        if modality in self.frozen:
            with torch.no_grad():
                return self.encoders[modality](batch)
        return self.encoders[modality](batch)

    def embed(self, modality: str, batch: Any) -> torch.Tensor:
        """L2-normalised common-space embeddings of one modality's batch."""
        fused = self.fusion(self.features(modality, batch), modality)
        return nn.functional.normalize(fused, dim=-1)

    def pair_loss(self, emb: Mapping[str, torch.Tensor], groups: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The retrieval loss and each ``loss.extra`` objective (unweighted), summed over the trained
        modality pairs, over the pairs of every process (negatives from the global batch)."""
        g = gather(groups)
        gathered = {m: gather_with_grad(emb[m]) for m in dict.fromkeys(m for p in self.pairs for m in p)}
        loss, extras = 0.0, dict.fromkeys(self.extra_names, 0.0)
        for a, b in self.pairs:
            ea, eb = gathered[a], gathered[b]
            loss = loss + self.loss(ea, eb, g)
            for name, fn in zip(self.extra_names, self.extra_losses):
                extras[name] = extras[name] + fn(ea, eb, g)
        return loss, extras

    def _step(self, batch: Mapping[str, Any], stage: str) -> torch.Tensor:
        emb = {m: self.embed(m, batch[m]) for m in self.modalities}
        loss, extras = self.pair_loss(emb, batch["group"])
        batch_size = len(batch["group"])
        self.log(f"{stage}/retrieval_loss", loss, batch_size=batch_size)
        for (name, value), weight in zip(extras.items(), self.extra_weights):
            self.log(f"{stage}/{name}", value, batch_size=batch_size)
            loss = loss + weight * value
        progress = self._progress()
        aux, logs = self.fusion.auxiliary_loss(emb, progress)
        if aux is not None:
            loss = loss + aux
            for key, value in logs.items():
                self.log(f"{stage}/{key}", value, batch_size=batch_size)
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=batch_size)
        return loss

    def on_train_start(self) -> None:
        self._total_steps = self.trainer.estimated_stepping_batches  # once, not in every step

    def _progress(self) -> float:
        if self._trainer is None:
            return 0.0
        total = getattr(self, "_total_steps", None) or self.trainer.estimated_stepping_batches
        if not total or math.isinf(total):
            return 0.0
        return min(1.0, self.global_step / total)

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        return self._step(batch, "val")

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        modality = self.modalities[dataloader_idx]
        return batch["index"], self.embed(modality, batch["item"])

    # ------------------------------------------------------------------ optimisation

    def configure_optimizers(self):
        cfg = self.optimizer_cfg
        trainable = [p for p in self.parameters() if p.requires_grad]
        # As in CLIP: no weight decay on gains, biases and the temperature (tensors of fewer than 2 dims).
        groups = [
            {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": cfg["weight_decay"]},
            {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
        ]
        if cfg["name"] == "sgd":
            opt = torch.optim.SGD(groups, lr=cfg["lr"], momentum=cfg["momentum"])
        else:
            cls = torch.optim.AdamW if cfg["name"] == "adamw" else torch.optim.Adam
            opt = cls(groups, lr=cfg["lr"])
        estimated = self.trainer.estimated_stepping_batches
        if math.isinf(estimated) and (cfg["schedule"] != "constant" or cfg["warmup_steps"]):
            raise XmcoreError(
                "optimizer.schedule: a cosine schedule (or warm-up) needs a finite number of steps; "
                "set trainer.max_epochs or trainer.max_steps, or use optimizer.schedule=constant"
            )
        total = max(1, int(min(estimated, 2**62)))
        warmup = min(cfg["warmup_steps"], total - 1)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            if cfg["schedule"] == "constant":
                return 1.0
            return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def load_model_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load what embedding needs -- the encoders' and the fusion's weights -- strictly; the losses'
        own parameters (a temperature, a label classifier) only train, and are left out."""
        model = {k: v for k, v in state_dict.items() if k.startswith(EMBEDDING_PARTS)}
        result = self.load_state_dict(model, strict=False)
        missing = [k for k in result.missing_keys if k.startswith(EMBEDDING_PARTS)]
        if missing or result.unexpected_keys:
            raise RuntimeError(f"missing keys {missing[:5]}, unexpected keys {result.unexpected_keys[:5]}")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint.update(self.extra_checkpoint)
