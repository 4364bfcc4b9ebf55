"""Retrieval evaluation: exact ranking by cosine similarity, in query chunks.

For each query the evaluator finds the rank of its best-placed relevant item
(1 = top).  With several captions per image, image->text counts the best-placed
of that image's captions -- the rule of CLIP_benchmark, VSE++ and LAVIS -- and
text->image is averaged over all captions.

Ties are pessimistic: an irrelevant item with exactly the relevant item's score
is counted as ranked above it, so a model that scores everything equal gets the
worst rank, never a lucky one, and results do not depend on sort stability.

Memory is O(chunk x gallery): the queries x gallery score matrix is never built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import torch

from xmcore.data import Split

Metric = Callable[[Mapping[str, "Ranking"]], dict[str, float]]


class NonFiniteEmbeddings(ValueError):
    """Embeddings with NaN/inf: every comparison with NaN is false, which would rank every query first."""


@dataclass
class Ranking:
    """One retrieval direction's result: ``ranks[q]`` is query q's first relevant rank (1-based)."""

    direction: str  # e.g. "i2t"
    ranks: np.ndarray


def direction_name(query_modality: str, gallery_modality: str) -> str:
    return f"{query_modality[0]}2{gallery_modality[0]}"


@torch.no_grad()
def first_relevant_ranks(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    query_groups: torch.Tensor,
    gallery_groups: torch.Tensor,
    chunk_size: int = 1024,
) -> np.ndarray:
    """Rank (1-based) of the best-scored relevant gallery item for each query.

    Embeddings are L2-normalised here, so scores are cosine similarities.  An item
    is relevant to a query when their groups are equal.  Every query must have at
    least one relevant item.
    """
    for name, emb in (("query", queries), ("gallery", gallery)):
        if not bool(torch.isfinite(emb).all()):
            raise NonFiniteEmbeddings(f"{name} embeddings contain NaN or infinite values")
    queries = torch.nn.functional.normalize(queries.float(), dim=-1)
    gallery = torch.nn.functional.normalize(gallery.float(), dim=-1)
    ranks = torch.empty(len(queries), dtype=torch.long)
    for start in range(0, len(queries), chunk_size):
        q = queries[start : start + chunk_size]
        scores = q @ gallery.T
        relevant = query_groups[start : start + chunk_size, None] == gallery_groups[None, :]
        if not bool(relevant.any(dim=1).all()):
            raise ValueError("a query has no relevant item in the gallery")
        best = scores.masked_fill(~relevant, float("-inf")).amax(dim=1, keepdim=True)
        ranks[start : start + len(q)] = 1 + ((scores >= best) & ~relevant).sum(dim=1)
    return ranks.numpy()


def rank_both_directions(embeddings: Mapping[str, torch.Tensor], split: Split, chunk_size: int = 1024) -> dict[str, Ranking]:
    """Rankings for first->second and second->first modality (``i2t`` and ``t2i``)."""
    a, b = split.modalities
    groups = {m: torch.as_tensor(split.groups(m)) for m in (a, b)}
    out = {}
    for query, gallery in ((a, b), (b, a)):
        name = direction_name(query, gallery)
        ranks = first_relevant_ranks(embeddings[query], embeddings[gallery], groups[query], groups[gallery], chunk_size)
        out[name] = Ranking(name, ranks)
    return out


def compute_metrics(rankings: Mapping[str, Ranking], metrics: list[Metric]) -> dict[str, float]:
    """Run every metric; order ids by direction (as the rankings are ordered), then the global ones."""
    values: dict[str, float] = {}
    for metric in metrics:
        values.update({k: float(v) for k, v in metric(rankings).items()})
    ordered = {k: values[k] for d in rankings for k in values if k.startswith(f"{d}/")}
    ordered.update({k: v for k, v in values.items() if k not in ordered})
    return ordered


def metrics_table(metrics: Mapping[str, float]) -> str:
    """A markdown table: one row per direction, one column per metric, then the global metrics."""
    directions: dict[str, dict[str, float]] = {}
    glob = {}
    for key, value in metrics.items():
        d, sep, m = key.partition("/")
        if sep:
            directions.setdefault(d, {})[m] = value
        else:
            glob[key] = value
    cols = list(dict.fromkeys(m for row in directions.values() for m in row))
    lines = ["| direction | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for d, row in directions.items():
        lines.append(f"| {d} | " + " | ".join(_fmt(row.get(c), f"{d}/{c}") for c in cols) + " |")
    if glob:
        lines.append("")
        lines += [f"**{k}**: {_fmt(v)}" for k, v in glob.items()]
    return "\n".join(lines) + "\n"


def _fmt(value: float | None, key: str = "") -> str:
    if value is None:
        return ""
    if "/med" in key or abs(value) > 1:
        return f"{value:.0f}" if float(value).is_integer() else f"{value:.2f}"
    return f"{value:.4f}"
