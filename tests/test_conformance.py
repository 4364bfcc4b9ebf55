"""Our metrics equal the field's reference implementations to 1e-6.

References: torchmetrics' retrieval metrics, and CLIP_benchmark's recall_at_k rule
(an image counts as retrieved when any of its captions is in the top k).

Ties: xmcore ranks ties pessimistically (an irrelevant item tied with a relevant one
ranks above it).  torchmetrics breaks ties by its sort order, so before handing it the
scores we lower every relevant item by an epsilon far below any score gap -- the same
pessimistic order, made explicit.  torchmetrics >= 1.8 also treats a relevant item
scored <= 0 as a miss in Recall/MAP, so cosine scores are shifted by +3 first.
"""

import numpy as np
import pytest
import torch
from torchmetrics.retrieval import (
    RetrievalHitRate, RetrievalMAP, RetrievalNormalizedDCG, RetrievalPrecision, RetrievalRecall,
)

from xmcore.data import Split
import xmcore.evaluation
from xmcore.evaluation import compute_metrics, evaluate, rank_directions
from xmcore.plugins import load_plugins
from xmcore.testing import build

PLUGINS = load_plugins()
K = [1, 5, 10]


def metrics():
    get = PLUGINS["metric"].get
    return [
        build(get("recall"), k=K), build(get("recall-fraction"), k=K), build(get("precision"), k=K),
        build(get("map"), k=K), build(get("ndcg"), k=K), build(get("map-at-r")), build(get("rank")),
    ]


def make_case(seed, images, captions, ties=False, labels=None):
    g = torch.Generator().manual_seed(seed)
    owner = np.repeat(np.arange(images), captions)
    img = torch.randn(images, 8, generator=g)
    txt = img[owner] + 1.2 * torch.randn(len(owner), 8, generator=g)
    if ties:  # every embedding one of 3 basis vectors: scores are exactly 0 or 1, ties everywhere
        basis = torch.eye(8)
        img = basis[torch.randint(0, 3, (images,), generator=g)]
        keep = torch.rand(len(owner), generator=g) < 0.6
        txt = torch.where(keep[:, None], img[owner], basis[torch.randint(0, 3, (len(owner),), generator=g)])
    split = Split(("image", "text"), {"image": list(range(images)), "text": list(range(len(owner)))}, owner,
                  labels=labels, relevance="label" if labels is not None else "owner")
    return split, {"image": img, "text": txt}


def reference(scores, relevant, metric_cls, **kwargs):
    """A torchmetrics metric over a queries x gallery score matrix, ties made pessimistic."""
    scores = scores.double()  # float64, so the shift and the epsilon below change no order
    distinct = torch.unique(scores)
    gap = (distinct[1:] - distinct[:-1]).min().item() if len(distinct) > 1 else 1.0
    preds = scores + 3 - (gap / 10) * relevant.double()
    index = torch.arange(scores.shape[0])[:, None].expand_as(scores)
    return float(metric_cls(**kwargs)(preds.flatten(), relevant.flatten(), indexes=index.flatten()))


def clip_benchmark_recall(scores, relevant, k):
    """CLIP_benchmark's rule: a query is a hit when any relevant item is among its top-k indices."""
    topk = scores.topk(k, dim=1).indices
    return float((relevant.gather(1, topk).sum(1) > 0).float().mean())


@pytest.mark.parametrize(
    "seed, images, captions, ties, with_labels",
    [(0, 30, 1, False, False), (1, 30, 5, False, False), (2, 25, 5, True, False), (3, 30, 1, True, False),
     (4, 30, 2, False, True), (5, 30, 3, True, True)],
    ids=["random-1cap", "random-5cap", "ties-5cap", "ties-1cap", "labels", "labels-ties"],
)
def test_metrics_match_torchmetrics(seed, images, captions, ties, with_labels, monkeypatch):
    labels = np.arange(images) % 4 if with_labels else None
    split, emb = make_case(seed, images, captions, ties, labels)
    # Four ways to the same numbers: every rank kept, or only what the metrics declare they read (Needs);
    # ranks counted, or rows sorted (the evaluator's two strategies, chosen by relevant items per query).
    variants = {}
    for strategy, threshold in (("count", float("inf")), ("sort", -1)):
        monkeypatch.setattr(xmcore.evaluation, "SORT_ABOVE", threshold)
        variants[f"{strategy}, every rank kept"] = compute_metrics(rank_directions(emb, split), metrics())
        variants[f"{strategy}, what the metrics need"] = evaluate(emb, split, metrics())[1]
    ours = variants["count, every rank kept"]
    for name, values in variants.items():
        assert values == pytest.approx(ours, abs=1e-12), name

    normed = {m: torch.nn.functional.normalize(e.float(), dim=-1) for m, e in emb.items()}
    for d, (q, gal) in {"i2t": ("image", "text"), "t2i": ("text", "image")}.items():
        scores = normed[q] @ normed[gal].T
        relevant = torch.as_tensor(split.groups(q))[:, None] == torch.as_tensor(split.groups(gal))[None, :]
        for k in K:
            assert ours[f"{d}/R@{k}"] == pytest.approx(reference(scores, relevant, RetrievalHitRate, top_k=k), abs=1e-6)
            assert ours[f"{d}/Recall@{k}"] == pytest.approx(reference(scores, relevant, RetrievalRecall, top_k=k), abs=1e-6)
            assert ours[f"{d}/P@{k}"] == pytest.approx(reference(scores, relevant, RetrievalPrecision, top_k=k), abs=1e-6)
            assert ours[f"{d}/mAP@{k}"] == pytest.approx(reference(scores, relevant, RetrievalMAP, top_k=k), abs=1e-6)
            assert ours[f"{d}/NDCG@{k}"] == pytest.approx(
                reference(scores, relevant, RetrievalNormalizedDCG, top_k=k), abs=1e-6)
            if not ties:  # the CLIP_benchmark rule, with its own (topk) tie order: compare where no ties exist
                assert ours[f"{d}/R@{k}"] == pytest.approx(clip_benchmark_recall(scores, relevant, k), abs=1e-6)
        assert ours[f"{d}/mAP"] == pytest.approx(reference(scores, relevant, RetrievalMAP), abs=1e-6)


def test_map_at_r_by_hand():
    from xmcore.evaluation import Ranking
    from xmcore_metrics.ranking import map_at_r

    # query 0: 2 relevant at ranks 1 and 3 -> R=2: (1/1 + 0)/2 = 0.5 ; query 1: 1 relevant at rank 1 -> 1
    r = Ranking("x2y", np.array([1, 1]), np.array([1, 3, 1]), np.array([0, 2, 3]), 5)
    assert map_at_r({"x2y": r})["x2y/mAP@R"] == pytest.approx(0.75)


def test_modality_gap():
    gap = lambda emb, split: compute_metrics(  # noqa: E731
        rank_directions(emb, split), [build(PLUGINS["metric"].get("modality-gap"))])["gap"]
    # by hand: the embeddings are normalised first -- images (1,0), (0,1); texts (.6,.8), (0,-1) --
    # then the centroids (.5,.5) and (.3,-.1) are sqrt(.2^2 + .6^2) = sqrt(.4) apart
    split = Split(("image", "text"), {"image": [0, 1], "text": [0, 1]}, np.array([0, 1]))
    emb = {"image": torch.tensor([[2.0, 0.0], [0.0, 3.0]]), "text": torch.tensor([[3.0, 4.0], [0.0, -2.0]])}
    assert gap(emb, split) == pytest.approx(0.4 ** 0.5, abs=1e-6)
    same = {"image": emb["image"], "text": emb["image"] * 7}
    assert gap(same, split) == pytest.approx(0.0, abs=1e-7)

    split, emb = make_case(0, 10, 1)
    shifted = {"image": emb["image"], "text": emb["text"] + 5}
    assert 0 <= gap(emb, split) < gap(shifted, split) <= 2


def test_evaluate_embeddings_cli(tmp_path, capfd):
    import json

    from conftest import cli

    split, emb = make_case(7, 20, 5)
    np.savez(tmp_path / "e.npz", image=emb["image"].numpy(), text=emb["text"].numpy(), text_to_image=split.owner)
    result = cli(capfd, "evaluate", "--embeddings", tmp_path / "e.npz", "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    values = json.loads((tmp_path / "out" / "metrics.json").read_text())
    expected = compute_metrics(rank_directions(emb, split), metrics())
    for key in ("i2t/R@1", "t2i/R@5", "i2t/medR", "i2t/mAP"):
        assert values[key] == pytest.approx(expected[key])
    assert "gap" in values and "t2i/NDCG@10" in values and (tmp_path / "out" / "metrics.md").is_file()

    labels = np.arange(20) % 3
    np.savez(tmp_path / "l.npz", image=emb["image"].numpy(), text=emb["text"].numpy(), text_to_image=split.owner,
             image_labels=labels, text_labels=labels[split.owner])
    only = cli(capfd, "evaluate", "--embeddings", tmp_path / "l.npz", "--out", tmp_path / "l",
               "--metrics", "[{name: map}, {name: precision, k: [5]}]")
    assert only.returncode == 0, only.stderr
    assert set(json.loads((tmp_path / "l" / "metrics.json").read_text())) == {"i2t/mAP", "t2i/mAP", "i2t/P@5", "t2i/P@5"}

    np.savez(tmp_path / "bad.npz", image=emb["image"].numpy(), text=emb["text"].numpy())
    bad = cli(capfd, "evaluate", "--embeddings", tmp_path / "bad.npz", "--out", tmp_path / "b")
    assert bad.returncode == 2 and "has no array 'text_to_image'" in bad.stderr and "Traceback" not in bad.stderr
    typo = cli(capfd, "evaluate", "--embeddings", tmp_path / "e.npz", "--out", tmp_path / "t", "--metrics", "[{name: mapp}]")
    assert typo.returncode == 2 and "unknown metric 'mapp'; did you mean 'map'?" in typo.stderr
