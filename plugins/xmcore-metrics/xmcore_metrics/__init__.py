"""Rank-based retrieval metrics, computed from each query's first relevant rank.

``R@K`` is the hit rate: the share of queries with a relevant item in the top K
(for image->text: any of the image's captions, the rule of CLIP_benchmark,
VSE++ and LAVIS).  ``rsum`` adds every R@K of both directions (with the default
K = 1, 5, 10 it is the rsum of the VSE++ papers, on a 0..6 scale since R@K is a
fraction here, not a percentage).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
from pydantic import Field, field_validator

import xmcore


class RecallParams(xmcore.Params):
    k: list[int] = Field([1, 5, 10], description="cut-offs K for R@K")
    rsum: bool = Field(True, description="also report rsum, the sum of every R@K in both directions")

    @field_validator("k")
    @classmethod
    def _positive(cls, k: list[int]) -> list[int]:
        if not k or any(v < 1 for v in k):
            raise ValueError("expected a non-empty list of positive integers")
        return sorted(set(k))


class Recall:
    def __init__(self, ks: list[int], rsum: bool):
        self.ks = ks
        self.rsum = rsum

    def __call__(self, rankings: Mapping[str, "xmcore.evaluation.Ranking"]) -> dict[str, float]:
        out = {}
        for d, r in rankings.items():
            for k in self.ks:
                out[f"{d}/R@{k}"] = float(np.mean(r.ranks <= k))
        if self.rsum:
            out["rsum"] = float(sum(out.values()))
        return out


def rank_metrics(rankings) -> dict[str, float]:
    out = {}
    for d, r in rankings.items():
        out[f"{d}/medR"] = float(np.floor(np.median(r.ranks)))
        out[f"{d}/meanR"] = float(np.mean(r.ranks))
    return out


def build_recall(params: RecallParams, ctx: xmcore.BuildContext):
    """Recall@K: share of queries with a relevant item in the top K, and rsum."""
    return Recall(params.k, params.rsum)


def build_rank(params: xmcore.Params, ctx: xmcore.BuildContext):
    """Median (medR) and mean (meanR) rank of the first relevant item."""
    return rank_metrics


@xmcore.hookimpl
def xmcore_register_metrics(register):
    register("recall", build_recall, params=RecallParams)
    register("rank", build_rank)
