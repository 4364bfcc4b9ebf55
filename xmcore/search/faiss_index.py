"""FAISS construction: the index kinds ``xmcore index --index`` offers, their parameters, and what a written
index does not remember (the search-time parameters, set again when it is read).

Every kind is inner product on L2-normalised vectors, so a score is a cosine: ``flat`` (exact), ``hnsw``
(a graph) and ``ivfpq`` (coarse cells and product-quantised codes, optionally re-ranked exactly).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xmcore.errors import XmcoreError

INDEX_TYPES = ("flat", "hnsw", "ivfpq")


@dataclass
class IndexOptions:
    """The FAISS index kind and its parameters (all inner product on normalised vectors)."""

    kind: str = "flat"
    hnsw_m: int = 32  # HNSW: links per node
    ef_construction: int = 200  # HNSW: candidate list while building
    ef_search: int = 128  # HNSW: candidate list while searching (recall <-> speed)
    nlist: int = 1024  # IVF-PQ: coarse cells
    pq_m: int = 32  # IVF-PQ: sub-quantizers (must divide the dimension)
    nbits: int = 8  # IVF-PQ: bits per sub-quantizer code
    nprobe: int = 32  # IVF-PQ: cells visited per query (recall <-> speed)
    refine: int = 0  # IVF-PQ: re-rank refine * k candidates with the exact vectors (0: off)
    shards: int = 1  # FAISS files per modality, searched together (xmcore.search.ivf)
    on_disk: bool = False  # IVF-PQ: inverted lists in an .ivfdata file, memory-mapped when searched
    max_memory: int | None = None  # IVF-PQ: a budget in bytes that chooses nlist, PQ size and the sample

    def params(self) -> dict[str, int]:
        if self.kind == "hnsw":
            return {"hnsw_m": self.hnsw_m, "ef_construction": self.ef_construction, "ef_search": self.ef_search}
        if self.kind == "ivfpq":
            return {"nlist": self.nlist, "pq_m": self.pq_m, "nbits": self.nbits, "nprobe": self.nprobe, "refine": self.refine}
        return {}

    @classmethod
    def from_manifest(cls, entry: dict[str, Any]) -> "IndexOptions":
        return cls(kind=entry["type"], **entry.get("params", {}))


def check_kind(kind: str) -> None:
    if kind not in INDEX_TYPES:
        raise XmcoreError(f"--index: unknown index type '{kind}'; choose one of {', '.join(INDEX_TYPES)}")


def faiss_module():
    """The ``faiss`` module, imported when first needed."""
    try:
        import faiss
    except ImportError:  # pragma: no cover - faiss-cpu is a dependency
        raise XmcoreError("search indexes need FAISS: pip install faiss-cpu") from None
    return faiss


def new_faiss_index(dim: int, options: IndexOptions, train: np.ndarray | None = None):
    """An empty index of ``options.kind`` (trained on ``train`` where the kind needs training)."""
    faiss = faiss_module()
    if options.kind == "flat":
        return faiss.IndexFlatIP(dim)
    if options.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, options.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = options.ef_construction
        index.hnsw.efSearch = options.ef_search
        return index
    if options.kind == "ivfpq":
        return _new_ivfpq(faiss, dim, options, train)
    check_kind(options.kind)


def _new_ivfpq(faiss, dim: int, options: IndexOptions, train: np.ndarray | None):
    if dim % options.pq_m:
        raise XmcoreError(f"--pq-m {options.pq_m} must divide the embedding dimension {dim}")
    needed = max(options.nlist, 2**options.nbits)
    if train is None or len(train) < needed:
        raise XmcoreError(
            f"an IVF-PQ index with --nlist {options.nlist} and --nbits {options.nbits} needs at least {needed} "
            f"vectors to train on, and this gallery has {0 if train is None else len(train)}; lower --nlist "
            "(about sqrt of the gallery size) or use --index flat or hnsw"
        )
    index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, options.nlist, options.pq_m, options.nbits,
                             faiss.METRIC_INNER_PRODUCT)
    index.train(np.ascontiguousarray(train, dtype=np.float32))
    index.nprobe = options.nprobe
    if options.refine:
        index = faiss.IndexRefineFlat(index)
        index.k_factor = float(options.refine)
    return index


def set_search_params(index, options: IndexOptions) -> None:
    """What a written index does not remember: HNSW's efSearch, IVF's nprobe, the refine factor."""
    faiss = faiss_module()
    if options.kind == "hnsw":
        index.hnsw.efSearch = options.ef_search
    elif options.kind == "ivfpq":
        base = index
        if isinstance(index, faiss.IndexRefine):
            index.k_factor = float(options.refine)
            base = faiss.downcast_index(index.base_index)
        faiss.extract_index_ivf(base).nprobe = options.nprobe


def train_sample(vectors: np.ndarray, options: IndexOptions, seed: int = 0) -> np.ndarray:
    """IVF-PQ trains on a sample: 64 points per coarse cell and per PQ centroid (FAISS wants >= 39)."""
    cap = 64 * max(options.nlist, 2**options.nbits)
    if len(vectors) <= cap:
        return vectors
    return vectors[np.sort(np.random.default_rng(seed).choice(len(vectors), cap, replace=False))]


def read_faiss(path: Path, options: IndexOptions | None = None):
    """A written index, its search-time parameters set from ``options``."""
    index = faiss_module().read_index(str(path))
    if options is not None:
        set_search_params(index, options)
    return index


def write_faiss(path: Path, index) -> None:
    """Written atomically: a temporary file beside it, then renamed."""
    tmp = path.with_name(f".{path.name}.tmp")
    faiss_module().write_index(index, str(tmp))
    tmp.replace(path)
