"""Retrieval metrics, computed from the exact ranks of every relevant item (``xmcore.evaluation.Ranking``).

``R@K`` is the hit rate: the share of queries with a relevant item in the top K
(for image->text: any of the image's captions, the rule of CLIP_benchmark,
VSE++ and LAVIS).  ``rsum`` adds every R@K of both directions (with the default
K = 1, 5, 10 it is the rsum of the VSE++ papers, on a 0..6 scale since R@K is a
fraction here, not a percentage).
"""

from __future__ import annotations

from pydantic import Field, field_validator

import xmcore


def _ks(k: list[int]) -> list[int]:
    if any(v < 1 for v in k):
        raise ValueError("expected a list of positive integers")
    return sorted(set(k))


class RecallParams(xmcore.Params):
    k: list[int] = Field([1, 5, 10], description="cut-offs K for R@K")
    rsum: bool = Field(True, description="also report rsum, the sum of every R@K in both directions")

    @field_validator("k")
    @classmethod
    def _positive(cls, k: list[int]) -> list[int]:
        if not k or any(v < 1 for v in k):
            raise ValueError("expected a non-empty list of positive integers")
        return sorted(set(k))


class CutoffParams(xmcore.Params):
    k: list[int] = Field([10], min_length=1, description="cut-offs K")

    _check = field_validator("k")(classmethod(lambda cls, k: _ks(k)))


class MAPParams(xmcore.Params):
    k: list[int] = Field([], description="also report mAP@K for these cut-offs (torchmetrics' RetrievalMAP(top_k=K))")

    _check = field_validator("k")(classmethod(lambda cls, k: _ks(k)))


def build_recall(params: RecallParams, ctx: xmcore.BuildContext):
    """R@K (hit rate): share of queries with a relevant item in the top K; and rsum."""
    from xmcore_metrics.ranking import Recall

    return Recall(params.k, params.rsum)


def build_rank(params: xmcore.Params, ctx: xmcore.BuildContext):
    """Median (medR) and mean (meanR) rank of the first relevant item."""
    from xmcore_metrics.ranking import rank_metrics

    return rank_metrics


def build_recall_fraction(params: CutoffParams, ctx: xmcore.BuildContext):
    """Recall@K: the share of a query's relevant items found in the top K, averaged over queries."""
    from xmcore_metrics.ranking import FoundInTopK

    return FoundInTopK(params.k, "Recall", per="relevant")


def build_precision(params: CutoffParams, ctx: xmcore.BuildContext):
    """P@K: the share of the top K that is relevant."""
    from xmcore_metrics.ranking import FoundInTopK

    return FoundInTopK(params.k, "P", per="k")


def build_map(params: MAPParams, ctx: xmcore.BuildContext):
    """mAP over the full ranking (the protocol of DSCMR), and mAP@K."""
    from xmcore_metrics.ranking import MeanAveragePrecision

    return MeanAveragePrecision(params.k)


def build_map_at_r(params: xmcore.Params, ctx: xmcore.BuildContext):
    """mAP@R: average precision within the top R, R being the query's number of relevant items."""
    from xmcore_metrics.ranking import map_at_r

    return map_at_r


def build_ndcg(params: CutoffParams, ctx: xmcore.BuildContext):
    """NDCG@K with binary relevance."""
    from xmcore_metrics.ranking import NDCG

    return NDCG(params.k)


def build_gap(params: xmcore.Params, ctx: xmcore.BuildContext):
    """Modality gap: distance between the centroids of the normalised embeddings (Liang et al. 2022)."""
    from xmcore_metrics.ranking import modality_gap

    return modality_gap


@xmcore.hookimpl
def xmcore_register_metrics(register):
    register("recall", build_recall, params=RecallParams)
    register("rank", build_rank)
    register("recall-fraction", build_recall_fraction, params=CutoffParams)
    register("precision", build_precision, params=CutoffParams)
    register("map", build_map, params=MAPParams)
    register("map-at-r", build_map_at_r)
    register("ndcg", build_ndcg, params=CutoffParams)
    register("modality-gap", build_gap)
