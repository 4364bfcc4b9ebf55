"""The metric computations, vectorised over all queries.

Definitions follow the references they are tested against (tests/test_conformance.py):
torchmetrics' RetrievalHitRate, RetrievalRecall, RetrievalPrecision, RetrievalMAP (with
and without top_k) and RetrievalNormalizedDCG, and CLIP_benchmark's recall_at_k rule.
mAP over the full ranking is the protocol of DSCMR (L. Zhen et al., "Deep Supervised
Cross-Modal Retrieval", CVPR 2019); mAP@R follows K. Musgrave et al., "A Metric
Learning Reality Check", ECCV 2020; the modality gap follows W. Liang et al., "Mind
the Gap", NeurIPS 2022.

Each metric declares what it reads (``needs``, :class:`xmcore.evaluation.Needs`), so the evaluator
keeps only that: the first relevant rank, the relevant ranks within the largest K, and sums over
every relevant item for the full-ranking mAP and mAP@R.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from xmcore.evaluation import Needs


def _per_query(r, weights: np.ndarray) -> np.ndarray:
    """Per-query sums over the kept positions (those within the metric's declared depth)."""
    # float even when nothing is kept (numpy's bincount of empty weights is an integer array)
    return np.bincount(r.query_of_position, weights=weights, minlength=len(r.ranks)).astype(float)


def precision_at_hit(within: np.ndarray, position: np.ndarray, num_relevant: np.ndarray) -> np.ndarray:
    """Precision at each relevant item's rank: summed over a query's relevant items, R x its average precision."""
    return within / position


def precision_at_hit_within_r(within: np.ndarray, position: np.ndarray, num_relevant: np.ndarray) -> np.ndarray:
    """Precision at each relevant item ranked within the top R (R: the query's number of relevant items)."""
    return (within / position) * (position <= num_relevant)


class Recall:
    needs = Needs()  # the first relevant rank only

    def __init__(self, ks: list[int], rsum: bool):
        self.ks = ks
        self.rsum = rsum

    def __call__(self, rankings: Mapping) -> dict[str, float]:
        out = {f"{d}/R@{k}": float(np.mean(r.ranks <= k)) for d, r in rankings.items() for k in self.ks}
        if self.rsum:
            out["rsum"] = float(sum(out.values()))
        return out


def rank_metrics(rankings: Mapping) -> dict[str, float]:
    out = {}
    for d, r in rankings.items():
        out[f"{d}/medR"] = float(np.floor(np.median(r.ranks)))
        out[f"{d}/meanR"] = float(np.mean(r.ranks))
    return out


rank_metrics.needs = Needs()


class FoundInTopK:
    """Relevant items in the top K per query, divided by the query's relevant count (Recall@K) or by K (P@K)."""

    def __init__(self, ks: list[int], name: str, per: str):
        self.ks, self.name, self.per = ks, name, per
        self.needs = Needs(depth=max(ks))

    def __call__(self, rankings: Mapping) -> dict[str, float]:
        out = {}
        for d, r in rankings.items():
            for k in self.ks:
                found = _per_query(r, (r.positions <= k).astype(float))
                out[f"{d}/{self.name}@{k}"] = float(np.mean(found / (r.num_relevant if self.per == "relevant" else k)))
        return out


class MeanAveragePrecision:
    def __init__(self, ks: list[int]):
        self.ks = ks
        self.needs = Needs(depth=max(ks, default=0), sums=(precision_at_hit,))

    def __call__(self, rankings: Mapping) -> dict[str, float]:
        out = {}
        for d, r in rankings.items():
            out[f"{d}/mAP"] = float(np.mean(r.per_query_sum(precision_at_hit) / r.num_relevant))
            for k in self.ks:
                inside = r.positions <= k
                found = _per_query(r, inside.astype(float))
                total = _per_query(r, precision_at_hit(r.index_within_query, r.positions, None) * inside)
                # torchmetrics' top_k AP: averaged over the relevant items found in the top K; 0 when none is
                out[f"{d}/mAP@{k}"] = float(np.mean(np.divide(total, found, out=np.zeros_like(total), where=found > 0)))
        return out


def map_at_r(rankings: Mapping) -> dict[str, float]:
    return {f"{d}/mAP@R": float(np.mean(r.per_query_sum(precision_at_hit_within_r) / r.num_relevant))
            for d, r in rankings.items()}


map_at_r.needs = Needs(sums=(precision_at_hit_within_r,))


class NDCG:
    def __init__(self, ks: list[int]):
        self.ks = ks
        self.needs = Needs(depth=max(ks))

    def __call__(self, rankings: Mapping) -> dict[str, float]:
        out = {}
        for d, r in rankings.items():
            discount = 1.0 / np.log2(r.positions + 1.0)
            for k in self.ks:
                dcg = _per_query(r, discount * (r.positions <= k))
                ideal = np.cumsum(1.0 / np.log2(np.arange(1, k + 1) + 1.0))[np.minimum(r.num_relevant, k) - 1]
                out[f"{d}/NDCG@{k}"] = float(np.mean(dcg / ideal))
        return out


def modality_gap(rankings: Mapping) -> dict[str, float]:
    embeddings = getattr(rankings, "embeddings", {})
    if len(embeddings) < 2:
        return {}
    centroids = {m: e.mean(dim=0) for m, e in embeddings.items()}
    names = list(centroids)
    gaps = {f"{a[0]}-{b[0]}/gap": float((centroids[a] - centroids[b]).norm())
            for k, a in enumerate(names) for b in names[k + 1:]}
    if len(gaps) == 1:
        return {"gap": next(iter(gaps.values()))}
    return {**gaps, "gap": sum(gaps.values()) / len(gaps)}  # with three or more modalities: each pair, and their mean


modality_gap.needs = Needs()  # the embeddings only
