"""Features of frozen encoders, computed once per item instead of once per pair and epoch.

When an encoder is frozen and its modality has no training augmentation, its
output for an item never changes, so the run encodes every item of every split
once and trains the fusion on those features.  (A persistent on-disk cache keyed
by encoder, preprocessing and data plugs in here.)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping

import torch
from torch.utils.data import DataLoader

from xmcore.components import Encoder, Preprocessor
from xmcore.data import ItemDataset, RetrievalData
from xmcore.datamodule import ItemCollate


def cacheable_modalities(frozen: set[str], augment: Mapping[str, list]) -> set[str]:
    return {m for m in frozen if not augment.get(m)}


@torch.no_grad()
def encode_items(encoder: Encoder, items, batch_size: int, num_workers: int = 0, device: str = "cpu") -> torch.Tensor:
    loader = DataLoader(
        ItemDataset(items, encoder.preprocessor),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=ItemCollate(encoder.preprocessor),
    )
    was_training = encoder.training
    encoder.eval().to(device)
    out = []
    for batch in loader:
        item = batch["item"]
        item = {k: v.to(device) for k, v in item.items()} if isinstance(item, dict) else item.to(device)
        out.append(encoder(item).float().cpu())
    encoder.train(was_training)
    return torch.cat(out)


class FeatureRows(list):
    """Precomputed feature rows standing in for a split's items (one tensor per item)."""


def precompute(
    data: RetrievalData,
    encoders: Mapping[str, Encoder],
    modalities: set[str],
    batch_size: int,
    num_workers: int = 0,
    cache_root: Path | None = None,
    identities: Mapping[str, dict] | None = None,
    report=print,
) -> RetrievalData:
    """A copy of ``data`` whose items of ``modalities`` are their (frozen) encoder's features.

    With ``cache_root``, features are read from (or stored in) the on-disk cache, keyed by
    ``identities[modality]`` (component and parameters), the encoder's weights, its
    preprocessing and the items.
    """
    from xmcore.cache import cached_features

    device = "cuda" if torch.cuda.is_available() else "cpu"
    splits = {}
    for name, split in data.splits.items():
        items = dict(split.items)
        for m in sorted(modalities):
            compute = lambda m=m: encode_items(encoders[m], split.items[m], batch_size, num_workers, device)  # noqa: E731
            if cache_root is None:
                features, hit = compute(), False
            else:
                features, hit = cached_features(cache_root, dict(identities[m]), encoders[m], split.items[m], compute)
            report(f"{name} {m}: {len(features)} features {'read from the cache' if hit else 'encoded'}")
            items[m] = FeatureRows(features.unbind(0))
        splits[name] = dataclasses.replace(split, items=items)
    return dataclasses.replace(data, splits=splits)


class FeaturePassThrough(Preprocessor):
    """Preprocessing for a precomputed modality: rows are already features; stack them."""
