"""The evaluator: first-relevant ranks, the several-captions rule, ties, chunking; cross-checked with torchmetrics."""

import numpy as np
import pytest
import torch

from xmcore.data import Split
from xmcore.evaluation import compute_metrics, first_relevant_ranks, metrics_table, rank_directions
from xmcore.plugins import load_plugins
from xmcore.testing import build


def unit(*rows):
    return torch.nn.functional.normalize(torch.tensor(rows, dtype=torch.float), dim=-1)


def test_hand_computed_ranks():
    images = unit([1, 0], [0, 1])
    texts = unit([1, 0.1], [0.9, 0.5], [0.2, 1], [1, -0.2])
    owner = np.array([0, 1, 1, 0])  # image 1 owns texts 1 and 2
    split = Split(("image", "text"), {"image": [0, 1], "text": ["a", "b", "c", "d"]}, owner)
    r = rank_directions({"image": images, "text": texts}, split)
    # image 0: own texts 0 (1st) and 3 -> rank 1.  image 1: scores c > b > a > d -> text 2 is first -> rank 1
    assert r["i2t"].ranks.tolist() == [1, 1]
    # text 1 ([.9,.5]) is closer to image 0 than to its own image 1 -> rank 2
    assert r["t2i"].ranks.tolist() == [1, 2, 1, 1]


def test_any_caption_counts_for_image_to_text():
    images = unit([1, 0])
    gallery = unit([0, 1], [0.5, 0.5], [1, 0], [1, 0.2])  # scores: 0, .71, 1, .98
    ranks = first_relevant_ranks(images, gallery, torch.tensor([0]), torch.tensor([9, 9, 9, 0]))
    assert ranks.tolist() == [2]  # its only caption is beaten by text 2
    ranks = first_relevant_ranks(images, gallery, torch.tensor([0]), torch.tensor([9, 0, 9, 0]))
    assert ranks.tolist() == [2]  # the best of its two captions counts
    ranks = first_relevant_ranks(images, gallery, torch.tensor([0]), torch.tensor([0, 9, 0, 9]))
    assert ranks.tolist() == [1]


def test_ties_are_pessimistic():
    q = unit([1, 0])
    gallery = unit([1, 0], [1, 0], [1, 0])  # all equal; the relevant one is in the middle
    assert first_relevant_ranks(q, gallery, torch.tensor([5]), torch.tensor([1, 5, 2])).tolist() == [3]
    assert first_relevant_ranks(q, gallery, torch.tensor([5]), torch.tensor([5, 1, 2])).tolist() == [3]


def test_chunking_does_not_change_results():
    g = torch.Generator().manual_seed(0)
    q, gal = torch.randn(50, 8, generator=g), torch.randn(70, 8, generator=g)
    qg, gg = torch.randint(0, 20, (50,), generator=g), torch.arange(70) % 20
    full = first_relevant_ranks(q, gal, qg, gg, block_elements=100000)
    assert np.array_equal(full, first_relevant_ranks(q, gal, qg, gg, block_elements=150))


def test_non_finite_embeddings_are_an_error_not_a_perfect_score():
    from xmcore.evaluation import NonFiniteEmbeddings

    nan = torch.full((2, 2), float("nan"))
    with pytest.raises(NonFiniteEmbeddings):
        first_relevant_ranks(nan, unit([1, 0], [0, 1]), torch.tensor([0, 1]), torch.tensor([0, 1]))


def test_query_without_relevant_item_is_an_error():
    with pytest.raises(ValueError, match="no relevant item"):
        first_relevant_ranks(unit([1, 0]), unit([1, 0]), torch.tensor([1]), torch.tensor([2]))


@pytest.mark.parametrize("captions", [1, 5])
def test_recall_matches_torchmetrics_hit_rate(captions):
    from torchmetrics.retrieval import RetrievalHitRate

    g = torch.Generator().manual_seed(captions)
    n = 40
    images = torch.randn(n, 16, generator=g)
    owner = torch.arange(n).repeat_interleave(captions)
    texts = images[owner] + 1.5 * torch.randn(len(owner), 16, generator=g)
    split = Split(("image", "text"), {"image": list(range(n)), "text": list(range(len(owner)))}, owner.numpy())
    rankings = rank_directions({"image": images, "text": texts}, split)
    metrics = compute_metrics(rankings, [build(load_plugins()["metric"].get("recall"))])

    scores = unit(*images.tolist()) @ unit(*texts.tolist()).T
    # torchmetrics >= 1.8 treats a relevant item scored <= 0 as a miss: shift cosine scores to be positive
    scores = scores + 2
    for k in (1, 5, 10):
        i2t = RetrievalHitRate(top_k=k)(
            scores.flatten(), (owner[None, :] == torch.arange(n)[:, None]).flatten(),
            indexes=torch.arange(n)[:, None].expand(n, len(owner)).flatten(),
        )
        t2i = RetrievalHitRate(top_k=k)(
            scores.T.flatten(), (torch.arange(n)[None, :] == owner[:, None]).flatten(),
            indexes=torch.arange(len(owner))[:, None].expand(len(owner), n).flatten(),
        )
        assert metrics[f"i2t/R@{k}"] == pytest.approx(float(i2t), abs=1e-6)
        assert metrics[f"t2i/R@{k}"] == pytest.approx(float(t2i), abs=1e-6)


def test_rank_metrics_and_table():
    from xmcore.evaluation import Ranking

    plugins = load_plugins()
    metrics = [build(plugins["metric"].get("recall")), build(plugins["metric"].get("rank"))]
    rankings = {"i2t": Ranking("i2t", np.array([1, 3, 12, 2])), "t2i": Ranking("t2i", np.array([1, 1, 6]))}
    values = compute_metrics(rankings, metrics)
    assert list(values) == [
        "i2t/R@1", "i2t/R@5", "i2t/R@10", "i2t/medR", "i2t/meanR",
        "t2i/R@1", "t2i/R@5", "t2i/R@10", "t2i/medR", "t2i/meanR", "rsum",
    ]
    assert values["i2t/R@5"] == 0.75 and values["i2t/medR"] == 2 and values["i2t/meanR"] == 4.5
    assert values["t2i/R@1"] == pytest.approx(2 / 3) and values["t2i/medR"] == 1
    assert values["rsum"] == pytest.approx(0.25 + 0.75 + 0.75 + 2 / 3 + 2 / 3 + 1)
    table = metrics_table(values)
    assert "| i2t | 0.2500 | 0.7500 | 0.7500 | 2 | 4.50 |" in table


@pytest.mark.parametrize("ties", [False, True])
def test_counting_and_sorting_give_the_same_ranks(ties, monkeypatch):
    import xmcore.evaluation
    from xmcore.evaluation import rank

    g = torch.Generator().manual_seed(3)
    q, gal = torch.randn(40, 6, generator=g), torch.randn(90, 6, generator=g)
    if ties:  # scores of exactly 0, 1 or -1: ties everywhere, relevant and irrelevant alike
        q, gal = torch.eye(6)[torch.randint(0, 3, (40,), generator=g)], torch.eye(6)[torch.randint(0, 4, (90,), generator=g)]
        gal[::7] *= -1
    qg, gg = torch.randint(0, 5, (40,), generator=g), torch.arange(90) % 5
    results = []
    for threshold in (float("inf"), -1):  # always count, always sort
        monkeypatch.setattr(xmcore.evaluation, "SORT_ABOVE", threshold)
        results.append(rank(q, gal, qg, gg, block_elements=900))  # 10 queries per chunk
    counted, sorted_ = results
    assert np.array_equal(counted.ranks, sorted_.ranks)
    assert np.array_equal(counted.positions, sorted_.positions) and np.array_equal(counted.offsets, sorted_.offsets)
    assert counted.offsets[-1] == 40 * 18  # every relevant item's rank


def test_a_ranking_keeps_what_the_metrics_need():
    from xmcore.evaluation import Needs, rank

    def at_hit(within, position, num_relevant):
        return within / position

    def undeclared(within, position, num_relevant):
        return position

    g = torch.Generator().manual_seed(4)
    q, gal = torch.randn(30, 8, generator=g), torch.randn(200, 8, generator=g)
    qg, gg = torch.arange(30) % 4, torch.arange(200) % 4  # 50 relevant items per query
    full = rank(q, gal, qg, gg)
    cut = rank(q, gal, qg, gg, needs=Needs(depth=10, sums=(at_hit,)))
    assert full.depth is None and len(full.positions) == 30 * 50
    assert cut.depth == 10 and len(cut.positions) <= 30 * 10 and np.all(cut.positions <= 10)
    assert np.array_equal(cut.ranks, full.ranks) and np.array_equal(cut.num_relevant, full.num_relevant)
    inside = full.positions <= 10  # the kept ranks are exactly the full ranking's top 10
    assert np.array_equal(cut.positions, full.positions[inside])
    assert np.array_equal(cut.index_within_query, full.index_within_query[inside])
    assert np.array_equal(cut.query_of_position, full.query_of_position[inside])
    assert np.allclose(cut.per_query_sum(at_hit), full.per_query_sum(at_hit))  # summed while ranking / from every rank
    with pytest.raises(LookupError, match="declares f in its needs"):
        cut.per_query_sum(undeclared)

    class ThirdParty:  # a metric written before Needs existed: it reads every rank, so it gets every rank
        def __call__(self, rankings):
            return {}

    assert Needs.of([ThirdParty(), build(load_plugins()["metric"].get("recall"))]).depth is None
    assert Needs.of([build(load_plugins()["metric"].get("ndcg"), k=[3, 20])]) == Needs(depth=20)
