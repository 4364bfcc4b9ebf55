"""Retrieval evaluation: exact ranking by cosine similarity, in query chunks.

For each query the evaluator finds the rank of its best-placed relevant item
(1 = top).  With several captions per image, image->text counts the best-placed
of that image's captions -- the rule of CLIP_benchmark, VSE++ and LAVIS -- and
text->image is averaged over all captions.

Ties are pessimistic: an irrelevant item with exactly the relevant item's score
is counted as ranked above it, so a model that scores everything equal gets the
worst rank, never a lucky one, and results do not depend on sort stability.

Memory is bounded by a block size, not by the number of queries: the
queries x gallery score matrix is never built.  Every relevant item's rank is
computed, so metrics over the full ranking (mAP, NDCG) are exact too; what is
*kept* of those ranks is what the metrics declare they read (:class:`Needs`):
each query's first relevant rank and number of relevant items always, the
relevant ranks down to a depth (R@K, P@K, NDCG@K need the top K), and per-query
sums over every relevant item (mAP).  With relevance by class (10 classes,
100k x 100k: 10^9 relevant ranks) that is what keeps memory bounded.

Queries with few relevant items (a caption's own image) count the irrelevant
items scored above each relevant one; queries with many (a class) sort their
row once instead.  Both give the same ranks (tests/test_evaluation.py).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np
import torch

from xmcore.data import Split
from xmcore.errors import XmcoreError

Metric = Callable[[Mapping[str, "Ranking"]], dict[str, float]]


class ModalityNameClash(XmcoreError):
    """Two modalities whose direction ids would be the same (same first letter)."""


class NonFiniteEmbeddings(ValueError):
    """Embeddings with NaN/inf: every comparison with NaN is false, which would rank every query first."""


PerItem = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
"""A function summed over every relevant item of a query: ``f(within, position, num_relevant)`` -> weights,
where ``within`` is 1 for the query's best-ranked relevant item, 2 for the next, ...; ``position`` that
item's rank; ``num_relevant`` the query's number of relevant items (all arrays of the same length)."""


@dataclass(frozen=True)
class Needs:
    """What a metric reads from a :class:`Ranking` besides ``ranks`` and ``num_relevant`` (always there).

    A metric callable declares it as its attribute ``needs``; the evaluator keeps the union of its
    metrics' needs and nothing more.  ``depth``: each query's relevant ranks down to this rank stay in
    ``positions`` (0: none; ``None``: every one -- what a metric without ``needs`` gets, as before
    ``Needs`` existed).  ``sums``: :data:`PerItem` functions summed over *every* relevant item while
    ranking, read back with :meth:`Ranking.per_query_sum`; module-level functions, so that two
    metrics asking for the same sum share it.
    """

    depth: int | None = 0
    sums: tuple[PerItem, ...] = ()

    @classmethod
    def of(cls, metrics) -> "Needs":
        """The union of what ``metrics`` read; a metric that declares nothing reads every relevant rank."""
        depth: int | None = 0
        sums: list[PerItem] = []
        for metric in metrics:
            need = getattr(metric, "needs", None)
            if need is None or need.depth is None:
                depth = None
            elif depth is not None:
                depth = max(depth, need.depth)
            sums += [f for f in (need.sums if need else ()) if f not in sums]
        return cls(depth, tuple(sums))


EVERYTHING = Needs(depth=None)


@dataclass
class Ranking:
    """One retrieval direction's result.

    ``ranks[q]`` is query q's first relevant rank (1-based); ``num_relevant[q]`` its number of relevant
    items.  ``positions`` holds, query after query, the rank of each relevant gallery item in ascending
    order -- all of them, or (``depth``) those ranked at or above ``depth``; query q's slice is
    ``positions[offsets[q]:offsets[q + 1]]``.  :meth:`per_query_sum` gives sums over every relevant item.
    """

    direction: str
    ranks: np.ndarray
    positions: np.ndarray | None = None
    offsets: np.ndarray | None = None
    gallery_size: int = 0
    depth: int | None = None  # positions keeps ranks <= depth (None: every relevant item's)
    relevant: np.ndarray | None = None  # each query's number of relevant items, when positions is cut at depth
    sums: dict[PerItem, np.ndarray] = field(default_factory=dict)

    @property
    def num_relevant(self) -> np.ndarray:
        return self.relevant if self.relevant is not None else np.diff(self.offsets)

    @property
    def query_of_position(self) -> np.ndarray:
        """For each entry of ``positions``, its query."""
        return np.repeat(np.arange(len(self.ranks)), np.diff(self.offsets))

    @property
    def index_within_query(self) -> np.ndarray:
        """For each entry of ``positions``, 1 for the query's best-ranked relevant item, 2 for the next, ..."""
        kept = np.diff(self.offsets)
        return np.arange(len(self.positions)) - np.repeat(self.offsets[:-1], kept) + 1

    def per_query_sum(self, f: PerItem) -> np.ndarray:
        """``f`` summed over every relevant item of each query (see :data:`PerItem`)."""
        if f in self.sums:
            return self.sums[f]
        if self.depth is None and self.positions is not None:  # every rank is kept: sum them now
            counts = np.repeat(self.num_relevant, np.diff(self.offsets))
            weights = f(self.index_within_query, self.positions, counts)
            return np.bincount(self.query_of_position, weights=weights, minlength=len(self.ranks)).astype(float)
        raise LookupError(
            f"ranking {self.direction} kept no sum of {getattr(f, '__qualname__', f)}: a metric that reads "
            "per_query_sum(f) declares f in its needs (xmcore.evaluation.Needs(sums=(f,)))"
        )


class Rankings(dict):
    """Direction -> :class:`Ranking`, plus the L2-normalised embeddings they came from (for embedding-level
    metrics such as the modality gap)."""

    def __init__(self, rankings: Mapping[str, Ranking], embeddings: Mapping[str, torch.Tensor] | None = None):
        super().__init__(rankings)
        self.embeddings = dict(embeddings or {})


def _unit(emb: torch.Tensor) -> torch.Tensor:
    """L2-normalised float32 rows; the tensor itself when it already is (no copy of a large gallery)."""
    if emb.dtype == torch.float32 and bool(torch.allclose(emb.norm(dim=-1), torch.ones(()), atol=1e-5)):
        return emb
    return torch.nn.functional.normalize(emb.float(), dim=-1)


def normalize_(emb: torch.Tensor) -> torch.Tensor:
    """Normalise float32 rows in place (for large galleries: no second copy)."""
    return emb.div_(emb.norm(dim=-1, keepdim=True).clamp_min(1e-12))


def direction_name(query_modality: str, gallery_modality: str) -> str:
    """A direction's id: the first letters of the query's and the gallery's modality (``i2t``, ``t2a``)."""
    return f"{query_modality[0]}2{gallery_modality[0]}"


def directions(modalities) -> list[tuple[str, str]]:
    """Every (query, gallery) modality pair of a split, in order: for each pair of modalities, the first
    as query and then the second (``i2t``, ``t2i``; then ``i2a``, ``a2i``, ``t2a``, ``a2t`` with a third).

    Direction ids are first letters, so two modalities with the same first letter cannot be told apart:
    :class:`ModalityNameClash`, naming both."""
    modalities = list(modalities)
    initials: dict[str, str] = {}
    for m in modalities:
        if not m:
            raise ModalityNameClash("a modality needs a name; got an empty one")
        if m[0] in initials:
            raise ModalityNameClash(
                f"modalities '{initials[m[0]]}' and '{m}' start with the same letter, so their retrieval directions "
                f"(e.g. '{direction_name(initials[m[0]], m)}') cannot be told apart; rename one of them"
            )
        initials[m[0]] = m
    return [d for k, a in enumerate(modalities) for b in modalities[k + 1:] for d in ((a, b), (b, a))]


def _check_finite(**embeddings: torch.Tensor) -> None:
    for name, emb in embeddings.items():
        if not bool(torch.isfinite(emb).all()):
            raise NonFiniteEmbeddings(f"{name} embeddings contain NaN or infinite values")


SORT_ABOVE = 8
"""Queries with more relevant items than this on average are ranked by sorting their rows."""


@torch.no_grad()
def rank(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    query_groups,
    gallery_groups,
    direction: str = "",
    block_elements: int = 2**24,
    normalized: bool = False,
    needs: Needs | None = None,
) -> Ranking:
    """Exact ranks of every relevant gallery item for each query, by cosine similarity; of those, the
    :class:`Ranking` keeps what ``needs`` asks for (default: everything).

    An item is relevant to a query when their groups are equal; every query needs at
    least one.  Queries are scored in chunks against the whole gallery: memory stays
    O(``block_elements``) plus what is kept, whatever the number of queries.

    Ties are pessimistic: an irrelevant item scored exactly like a relevant one ranks
    above it; tied relevant items keep gallery order among themselves.
    """
    _check_finite(query=queries, gallery=gallery)
    if not normalized:
        queries = torch.nn.functional.normalize(queries.float(), dim=-1)
        gallery = torch.nn.functional.normalize(gallery.float(), dim=-1)
    needs = EVERYTHING if needs is None else needs
    qg = torch.as_tensor(np.asarray(query_groups), dtype=torch.long)
    gg = torch.as_tensor(np.asarray(gallery_groups), dtype=torch.long)
    n_queries, n_gallery = len(queries), len(gallery)

    # Relevant items per query, known before scoring: chunks are sized to them.
    values, counts = torch.unique(gg, return_counts=True)
    lookup = dict(zip(values.tolist(), counts.tolist()))
    per_query = np.array([lookup.get(g, 0) for g in qg.tolist()], dtype=np.int64)
    if (per_query == 0).any():
        raise ValueError(f"{(per_query == 0).sum()} queries have no relevant item in the gallery")

    first = np.empty(n_queries, dtype=np.int64)
    sums = {f: np.zeros(n_queries) for f in needs.sums}
    kept_rows, kept_positions = [], []
    sorting = per_query.mean() > SORT_ABOVE
    # Sorting holds about 18 bytes per score (the score, its int32 and int64 keys, flags), counting about 5.
    rows_per_chunk = max(1, block_elements // (4 if sorting else 1) // max(1, n_gallery))
    if sorting:  # buffers reused chunk after chunk
        shape = (min(rows_per_chunk, n_queries), n_gallery)
        workspace = {"keys": np.empty(shape, np.int64), "ordered": np.empty(shape, np.int32)}
    for start in range(0, n_queries, rows_per_chunk):
        stop = min(n_queries, start + rows_per_chunk)
        scores = queries[start:stop] @ gallery.T
        relevant = qg[start:stop, None] == gg[None, :]
        counts = per_query[start:stop]
        if sorting:
            rows, positions = _ranks_by_sorting(scores.numpy(), relevant.numpy(), **workspace)
        else:
            rows, positions = _ranks_by_counting(scores, relevant, block_elements)
        # rows ascending, each query's positions ascending: the k-th entry of a query is its k-th relevant item
        within = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts) + 1
        first[start:stop] = positions[within == 1]
        for f, total in sums.items():
            total[start:stop] = np.bincount(rows, weights=f(within, positions, counts[rows]), minlength=stop - start)
        keep = slice(None) if needs.depth is None else positions <= needs.depth
        kept_rows.append(rows[keep] + start)
        kept_positions.append(positions[keep])
    rows = np.concatenate(kept_rows) if kept_rows else np.empty(0, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n_queries))])
    positions = np.concatenate(kept_positions) if kept_positions else np.empty(0, dtype=np.int64)
    return Ranking(direction, first, positions, offsets, n_gallery, needs.depth, per_query, sums)


def _ranks_by_counting(scores: torch.Tensor, relevant: torch.Tensor, block_elements: int) -> tuple[np.ndarray, np.ndarray]:
    """Each relevant item's rank: 1 + the irrelevant items scored at least as high + the relevant items
    ranked above it.  Cost: relevant items x gallery -- for queries with few relevant items.
    Returns (row, rank) pairs by row, then rank."""
    n_gallery = scores.shape[1]
    rows, cols = relevant.nonzero(as_tuple=True)  # row-major: by query, then gallery order
    rel_scores = scores[rows, cols]
    rows_np = rows.numpy()
    # Relevant items ranked above each relevant item: higher score, or equal score and earlier in the gallery.
    order = np.lexsort((cols.numpy(), -rel_scores.numpy(), rows_np))
    counts = np.bincount(rows_np, minlength=scores.shape[0])
    within = np.empty(len(order), dtype=np.int64)
    within[order] = np.arange(len(order)) - np.repeat(np.cumsum(counts) - counts, counts)
    # Irrelevant items scored at least as high, counted in blocks of entries.
    ahead = torch.empty(len(rows), dtype=torch.long)
    step = max(1, block_elements // 2 // max(1, n_gallery))
    for e in range(0, len(rows), step):
        r = rows[e : e + step]
        block = scores[r] >= rel_scores[e : e + step, None]
        ahead[e : e + step] = (block & ~relevant[r]).sum(dim=1)
    ranked = 1 + ahead.numpy() + within
    order = np.lexsort((ranked, rows_np))
    return rows_np[order], ranked[order]


def _ranks_by_sorting(scores: np.ndarray, relevant: np.ndarray, keys: np.ndarray,
                      ordered: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each relevant item's rank, from one sort of each row.  Cost: gallery x log(gallery) per query,
    whatever its number of relevant items -- for queries with many (a class).  ``scores`` is overwritten;
    ``keys`` (int64) and ``ordered`` (int32) are buffers of at least its shape.

    Every score becomes an integer that sorts like it, descending, with one more bit that is set for a
    relevant item: among equal scores the irrelevant items sort first (pessimistic ties).  Tied relevant
    items take the same set of places in any order, and the metrics read only that set.
    Returns (row, rank) pairs by row, then rank."""
    n_rows, n_gallery = scores.shape
    keys, ordered = keys[:n_rows], ordered[:n_rows]
    np.add(scores, np.float32(0), out=scores)  # -0.0 becomes +0.0, so that equal scores get equal keys
    bits = scores.view(np.int32)
    np.right_shift(bits, 31, out=ordered)
    ordered &= 0x7FFFFFFF
    ordered ^= bits  # IEEE-754 floats as integers in the same order
    np.copyto(keys, ordered)
    np.invert(keys, out=keys)  # descending
    keys <<= 1
    keys |= relevant
    keys.sort(axis=1)
    lowest_byte = 0 if sys.byteorder == "little" else 7
    flat = np.flatnonzero(keys.view(np.uint8)[:, lowest_byte::8] & 1)
    rows = flat // n_gallery
    return rows, flat - rows * n_gallery + 1


def first_relevant_ranks(queries, gallery, query_groups, gallery_groups, block_elements: int = 2**24) -> np.ndarray:
    """Rank (1-based) of the best-placed relevant gallery item for each query."""
    return rank(queries, gallery, query_groups, gallery_groups, block_elements=block_elements, needs=Needs()).ranks


def rank_directions(
    embeddings: Mapping[str, torch.Tensor], split: Split, block_elements: int = 2**24, needs: Needs | None = None
) -> Rankings:
    """Rankings for every direction between the split's modalities (:func:`directions`): ``i2t`` and
    ``t2i`` for an image/text split.  ``needs`` (``Needs.of(metrics)``) says what to keep of the ranks;
    default: everything."""
    pairs = directions(split.modalities)
    _check_finite(**{m: embeddings[m] for m in split.modalities})
    normalised = {m: _unit(embeddings[m]) for m in split.modalities}
    groups = {m: split.groups(m) for m in split.modalities}
    out = {}
    for query, gallery in pairs:
        name = direction_name(query, gallery)
        out[name] = rank(normalised[query], normalised[gallery], groups[query], groups[gallery], name, block_elements,
                         normalized=True, needs=needs)
    return Rankings(out, normalised)


def evaluate(embeddings: Mapping[str, torch.Tensor], split: Split, metrics: list[Metric],
             block_elements: int = 2**24) -> tuple[Rankings, dict[str, float]]:
    """Rank every direction, keeping what ``metrics`` read (:class:`Needs`), and compute them."""
    rankings = rank_directions(embeddings, split, block_elements, Needs.of(metrics))
    return rankings, compute_metrics(rankings, metrics)


rank_both_directions = rank_directions  # the name before splits could hold more than two modalities


def evaluate_folds(embeddings: Mapping[str, torch.Tensor], split: Split, metrics: list[Metric], folds: int,
                   fold_size: int, block_elements: int = 2**24) -> dict[str, float]:
    """The metrics on ``folds`` disjoint folds -- the split's first ``fold_size`` owners (images) with their
    members (captions), the next ``fold_size``, ... -- averaged over the folds, as ``fold/<id>``.

    COCO's 1k protocol (five folds of the 5k test images; A. Karpathy & L. Fei-Fei, CVPR 2015; F. Faghri
    et al., VSE++, BMVC 2018): each fold's queries are ranked against that fold's gallery only."""
    first = split.modalities[0]
    owners = len(split.items[first])
    if folds < 1 or fold_size < 1 or folds * fold_size > owners:
        raise ValueError(f"{folds} folds of {fold_size} need {folds * fold_size} {first} items; the split has {owners}")
    per_fold = []
    for i in range(folds):
        keep = np.zeros(owners, dtype=bool)
        keep[i * fold_size : (i + 1) * fold_size] = True
        members = keep[split.owner]
        fold = split.subset(keep, members)
        rows = {first: torch.from_numpy(keep), **{m: torch.from_numpy(members) for m in split.members}}
        per_fold.append(evaluate({m: embeddings[m][rows[m]] for m in split.modalities}, fold, metrics, block_elements)[1])
    return {f"fold/{key}": float(np.mean([values[key] for values in per_fold])) for key in per_fold[0]}


def compute_metrics(rankings: Mapping[str, Ranking], metrics: list[Metric]) -> dict[str, float]:
    """Run every metric; order ids by direction (as the rankings are ordered), then the global ones."""
    values: dict[str, float] = {}
    for metric in metrics:
        values.update({k: float(v) for k, v in metric(rankings).items()})
    ordered = {k: values[k] for d in rankings for k in values if k.startswith(f"{d}/")}
    ordered.update({k: v for k, v in values.items() if k not in ordered})
    return ordered


def metrics_table(metrics: Mapping[str, float]) -> str:
    """A markdown table: one row per direction, one column per metric, then the global metrics; the folds'
    means (``fold/i2t/R@1``) as rows of their own (``fold/i2t``)."""
    directions: dict[str, dict[str, float]] = {}
    glob = {}
    for key, value in metrics.items():
        prefix = "fold/" if key.startswith("fold/") else ""
        d, sep, m = key.removeprefix(prefix).partition("/")
        if sep:
            directions.setdefault(prefix + d, {})[m] = value
        else:
            glob[key] = value
    cols = list(dict.fromkeys(m for row in directions.values() for m in row))
    lines = ["| direction | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for d, row in directions.items():
        lines.append(f"| {d} | " + " | ".join(format_metric(row.get(c), f"{d}/{c}") for c in cols) + " |")
    if glob:
        lines.append("")
        lines += [f"**{k}**: {format_metric(v)}" for k, v in glob.items()]
    return "\n".join(lines) + "\n"


def format_metric(value: float | None, key: str = "") -> str:
    """A metric as every table shows it: ranks (``.../medR``) and values above 1 as whole numbers or with
    2 decimals (``1``, ``1.29``, ``5.76``), rates with 4 (``0.8950``); ``key`` is the metric id."""
    if value is None:
        return ""
    if "/med" in key or abs(value) > 1:
        return f"{value:.0f}" if float(value).is_integer() else f"{value:.2f}"
    return f"{value:.4f}"




def load_embeddings_file(path) -> tuple[Split, dict[str, torch.Tensor]]:
    """Read an embeddings file (:mod:`xmcore.embeddings`: a run's ``embeddings.npz``, or ``image`` (N x d),
    ``text`` (M x d), ``text_to_image`` (M ints), optional ``image_labels`` / ``text_labels``), checked
    completely: anything that cannot be evaluated is an :class:`~xmcore.embeddings.EmbeddingsFileError`.

    With labels, relevance is by class; without, a text is relevant to its own image.
    """
    from xmcore.embeddings import load_embeddings

    loaded = load_embeddings(path)
    tensors = {m: torch.from_numpy(e) for m, e in loaded.embeddings.items()}
    return loaded.split, {m: t if _is_unit(t) else normalize_(t) for m, t in tensors.items()}  # no copy


def _is_unit(emb: torch.Tensor) -> bool:
    return bool(torch.allclose(emb.norm(dim=-1), torch.ones(()), atol=1e-5))
