"""Evaluation at scale: xmcore's streaming exact ranking against the full score matrix.

Each measurement runs in a fresh subprocess so that its peak memory (ru_maxrss) is its own.
The baseline is the common approach (CLIP_benchmark, LAVIS): build the whole queries x gallery
score matrix and a positives matrix, then take top-k; it yields R@K only, while xmcore's
evaluator yields every relevant item's exact rank (R@K, mAP, NDCG, ...).

The class-level case (relevance by class, the protocol of ACMR/DSCMR) has n / classes relevant
items per query: 10^9 relevant ranks at 100k x 100k with 10 classes, 8 GB as int64 for one
direction.  The evaluator computes each one and keeps what the default metrics read (first
relevant rank, relevant ranks within the top 10, per-query average-precision sums).

    python bench/eval_scale.py                      # 20k x 20k side by side, 100k x 100k streaming, 100k x 100k by class
    python bench/eval_scale.py --side-by-side 5000 --large 0 --by-class 20000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def make(n: int, d: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, d, generator=g)
    texts = images + 2.5 * torch.randn(n, d, generator=g)  # one caption per image, noisy
    return images, texts


def run_streaming(n: int, d: int) -> dict:
    import numpy as np

    from xmcore.data import Split
    from xmcore.evaluation import normalize_, rank_directions

    images, texts = (normalize_(e) for e in make(n, d))  # as `xmcore evaluate --embeddings` loads them
    split = Split(("image", "text"), {"image": range(n), "text": range(n)}, np.arange(n))
    start = time.perf_counter()
    rankings = rank_directions({"image": images, "text": texts}, split)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "R@1": float(np.mean(rankings["i2t"].ranks <= 1)),
            "R@10": float(np.mean(rankings["i2t"].ranks <= 10))}


def run_by_class(n: int, d: int, classes: int = 10) -> dict:
    """Relevance by class: every image and text of the query's class is relevant; the default metrics."""
    import numpy as np
    import torch

    from xmcore.data import Split
    from xmcore.evaluation import evaluate, normalize_
    from xmcore.plugins import load_plugins
    from xmcore.recipe import DEFAULT_METRICS
    from xmcore.testing import build

    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, classes, (n,), generator=g)
    centres = torch.randn(classes, d, generator=g)
    images = torch.randn(n, d, generator=g).add_(centres[labels], alpha=0.5)  # classes show, weakly
    texts = torch.randn(n, d, generator=g).mul_(2.5).add_(images)
    images, texts = normalize_(images), normalize_(texts)
    metric_registry = load_plugins()["metric"]
    metrics = [build(metric_registry.get(m["name"]), **{k: v for k, v in m.items() if k != "name"}) for m in DEFAULT_METRICS]
    split = Split(("image", "text"), {"image": range(n), "text": range(n)}, np.arange(n), labels.numpy(), "label")
    start = time.perf_counter()
    rankings, values = evaluate({"image": images, "text": texts}, split, metrics)
    seconds = time.perf_counter() - start
    kept = sum(len(r.positions) for r in rankings.values())
    return {"seconds": seconds, "mAP": values["i2t/mAP"], "t2i/mAP": values["t2i/mAP"], "R@1": values["i2t/R@1"],
            "R@10": values["i2t/R@10"], "relevant": int(sum(r.num_relevant.sum() for r in rankings.values())),
            "kept": int(kept)}


def run_full_matrix(n: int, d: int) -> dict:
    import torch

    images, texts = make(n, d)
    start = time.perf_counter()
    img = torch.nn.functional.normalize(images, dim=-1)
    txt = torch.nn.functional.normalize(texts, dim=-1)
    scores = txt @ img.T  # n x n
    positives = torch.eye(n, dtype=torch.bool)  # the positives matrix these tools build
    for s, p in ((scores, positives), (scores.T, positives.T)):  # text->image, then image->text
        hits = p.gather(1, s.topk(10, dim=1).indices)
        r1, r10 = hits[:, :1].any(1).float().mean().item(), hits.any(1).float().mean().item()
    return {"seconds": time.perf_counter() - start, "R@1": r1, "R@10": r10}  # of the last direction (i2t)


def child(kind: str, n: int, d: int, classes: int = 10) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--n", str(n), "--d", str(d), "--classes", str(classes)],
        capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side-by-side", type=int, default=20000, help="size n for both approaches (n x n; 0: skip)")
    parser.add_argument("--large", type=int, default=100000, help="size n for streaming alone (0: skip)")
    parser.add_argument("--by-class", type=int, default=100000, help="size n for relevance by class (0: skip)")
    parser.add_argument("--classes", type=int, default=10, help="classes of the by-class case")
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--child", choices=["streaming", "full", "by-class"], help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        if args.child == "by-class":
            result = run_by_class(args.n, args.d, args.classes)
        else:
            result = (run_streaming if args.child == "streaming" else run_full_matrix)(args.n, args.d)
        result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return

    n = args.side_by_side
    if n:
        full = child("full", n, args.d)
        stream = child("streaming", n, args.d)
        print(f"{n} texts x {n} images, d={args.d}")
        print(f"  full matrix : {full['seconds']:7.1f} s  peak {full['peak_mb']:7.0f} MB  R@1 {full['R@1']:.4f}  R@10 {full['R@10']:.4f}")
        print(f"  streaming   : {stream['seconds']:7.1f} s  peak {stream['peak_mb']:7.0f} MB  R@1 {stream['R@1']:.4f}  R@10 {stream['R@10']:.4f}")
        print(f"  ratio streaming/full: time {stream['seconds'] / full['seconds']:.2f}x, peak memory {stream['peak_mb'] / full['peak_mb']:.2f}x")
    if args.large:
        big = child("streaming", args.large, args.d)
        print(f"{args.large} texts x {args.large} images, d={args.d}, streaming (both directions, every relevant rank):")
        print(f"  {big['seconds']:.1f} s, peak {big['peak_mb']:.0f} MB (target <= 1536 MB)")
    if args.by_class:
        n, c = args.by_class, args.classes
        by = child("by-class", n, args.d, c)
        print(f"{n} texts x {n} images, d={args.d}, relevance by class ({c} classes), default metrics, both directions:")
        print(f"  {by['relevant']:,} relevant ranks computed, {by['kept']:,} kept; i2t mAP {by['mAP']:.4f}, "
              f"t2i mAP {by['t2i/mAP']:.4f}, i2t R@1 {by['R@1']:.4f}")
        print(f"  {by['seconds']:.1f} s, peak {by['peak_mb']:.0f} MB (target <= 1536 MB; every rank as int64 would be "
              f"{by['relevant'] * 8 / 2**30:.1f} GiB)")


if __name__ == "__main__":
    main()
