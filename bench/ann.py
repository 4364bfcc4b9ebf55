"""Approximate search: recall@10 against exact search, and queries per second, side by side.

The indexes are the ones `xmcore index` writes (xmcore.search.new_faiss_index): exact ``flat``
(inner product) as the baseline, ``hnsw`` and ``ivfpq`` (with exact re-ranking of the PQ
candidates).  The vectors are synthetic, L2-normalised embeddings of d = 256 that lie near a
32-dimensional subspace, in 1,000 clusters -- as trained embeddings do; isotropic random vectors
(no structure at all) are the worst case of every ANN method and not what a model produces.
Queries are drawn from the same distribution and are not in the index.  All searches run as one
batch of queries on every core.  Target at 1M vectors: recall@10 >= 0.95 at >= 20x the QPS of exact.

    python bench/ann.py                 # 100,000 vectors (about a minute)
    python bench/ann.py --n 1000000     # the README's figures (several minutes)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xmcore.search import IndexOptions, new_faiss_index, set_search_params, train_sample  # noqa: E402


def embeddings(n: int, d: int, seed: int, intrinsic: int = 32, clusters: int = 1000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(12345).standard_normal((intrinsic, d)).astype(np.float32)  # shared by all draws
    centres = np.random.default_rng(54321).standard_normal((clusters, intrinsic)).astype(np.float32)
    out = np.empty((n, d), np.float32)
    for lo in range(0, n, 100_000):
        m = min(100_000, n - lo)
        z = centres[rng.integers(0, clusters, m)] + 0.6 * rng.standard_normal((m, intrinsic), dtype=np.float32)
        x = z @ basis + 0.3 * rng.standard_normal((m, d), dtype=np.float32)
        out[lo:lo + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def timed_search(index, queries: np.ndarray, k: int, repeat: int = 3) -> tuple[np.ndarray, float]:
    best, ids = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        _, ids = index.search(queries, k)
        best = min(best, time.perf_counter() - start)
    return ids, len(queries) / best


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k]) & set(t)) / k for f, t in zip(found, truth, strict=True)]))


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="vectors in the index")
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--kinds", default="hnsw,ivfpq")
    parser.add_argument("--ef-search", default="32,64,128", help="HNSW efSearch values to try on one built index")
    parser.add_argument("--nprobe", default="16,32,64", help="IVF-PQ nprobe values to try on one built index")
    parser.add_argument("--refine", type=int, default=8, help="IVF-PQ: re-rank refine*k candidates exactly")
    args = parser.parse_args(argv)
    nlist = int(4 * np.sqrt(args.n))  # FAISS's rule of thumb: 4 to 16 x sqrt(N)

    start = time.perf_counter()
    base = embeddings(args.n, args.d, seed=0)
    queries = embeddings(args.queries, args.d, seed=1)
    print(f"{args.n} vectors, d={args.d}, {args.queries} queries, k={args.k} (data made in {time.perf_counter() - start:.0f} s)")

    options = {
        "flat": IndexOptions("flat"),
        "hnsw": IndexOptions("hnsw", hnsw_m=32, ef_construction=80),
        "ivfpq": IndexOptions("ivfpq", nlist=nlist, pq_m=32, nbits=8, refine=args.refine),
    }
    # search-time settings, tried one after another on the same built index (recall <-> speed)
    settings = {"flat": [{}], "hnsw": [{"ef_search": int(v)} for v in args.ef_search.split(",")],
                "ivfpq": [{"nprobe": int(v)} for v in args.nprobe.split(",")]}
    rows, truth, exact_qps = [], None, None
    for kind in ["flat", *[k for k in args.kinds.split(",") if k]]:
        opts = options[kind]
        start = time.perf_counter()
        index = new_faiss_index(args.d, opts, train_sample(base, opts) if kind == "ivfpq" else None)
        index.add(base)
        build = time.perf_counter() - start
        for setting in settings[kind]:
            opts = dataclasses.replace(opts, **setting)
            set_search_params(index, opts)
            ids, qps = timed_search(index, queries, args.k)
            if kind == "flat":
                truth, exact_qps = ids, qps
            recall = recall_at_k(ids, truth)
            rows.append({"index": kind, "params": opts.params(), "build_s": build, "qps": qps, "recall@10": recall,
                         "speedup": qps / exact_qps})
            print(f"  {kind:6s} build {build:7.1f} s   {qps:9.0f} queries/s   recall@{args.k} {recall:.4f}   "
                  f"{qps / exact_qps:6.1f}x exact's QPS   {opts.params() or ''}", flush=True)
        del index
    return rows


if __name__ == "__main__":
    main()
